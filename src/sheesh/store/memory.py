"""The in-memory ``Store`` (unit tests): behaves as ``SqlStore`` does, checked by the same contract tests
(``tests/unit/test_store.py``): getters return copies, duplicates raise ``StoreError``."""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path

from sheesh.models import ApiKey, ExecKind, ExecLog, Image, NodeRecord, Snapshot, User, Vm
from sheesh.store.errors import StoreError
from sheesh.store.rows import R, Record, StoredImage


class MemoryStore:
    """In-memory ``Store`` for unit tests."""

    def __init__(self) -> None:
        self.vms: dict[str, Vm] = {}
        self._vms_version = 0
        self.rate_hits: dict[str, list[float]] = {}
        self.images: dict[str, StoredImage] = {}
        self.keys: dict[str, ApiKey] = {}
        self.users: dict[str, User] = {}
        self.snapshots: dict[str, Snapshot] = {}
        self.exec_logs: dict[str, list[ExecLog]] = {}
        self.records: dict[type[Record], dict[str, Record]] = {}

    def add_vm(self, vm: Vm) -> None:
        if vm.id in self.vms or vm.guest_ip in self.used_ips():
            raise StoreError(f"duplicate VM {vm.id} or address {vm.guest_ip}")
        self.vms[vm.id] = copy.deepcopy(vm)
        self._vms_version += 1

    def save_vm(self, vm: Vm) -> None:
        if vm.id in self.vms:
            self.vms[vm.id] = copy.deepcopy(vm)
        self._vms_version += 1

    def vms_version(self) -> int:
        return self._vms_version

    def get_vm(self, vm_id: str) -> Vm | None:
        vm = self.vms.get(vm_id)
        return copy.deepcopy(vm) if vm else None

    def list_vms(self) -> list[Vm]:
        return [copy.deepcopy(v) for v in sorted(self.vms.values(), key=lambda v: (v.created_at, v.id))]

    def delete_vm(self, vm_id: str) -> None:
        self.vms.pop(vm_id, None)
        self.exec_logs.pop(vm_id, None)
        self._vms_version += 1

    def used_ips(self) -> set[str]:
        return {v.guest_ip for v in self.vms.values()}

    def add_exec_log(self, entry: ExecLog, keep: int) -> None:
        entries = [*self.exec_logs.get(entry.vm_id, []), entry]
        entries.sort(key=lambda e: (e.started_at, e.id), reverse=True)
        self.exec_logs[entry.vm_id] = entries[:keep]

    def list_exec_logs(self, vm_id: str, kind: ExecKind | None, limit: int) -> list[ExecLog]:
        entries = self.exec_logs.get(vm_id, [])
        return [e for e in entries if kind is None or e.kind == kind][:limit]

    def add_image(self, image: Image, path: Path) -> None:
        if image.id in self.images:
            raise StoreError(f"duplicate image {image.id}")
        self.images[image.id] = StoredImage(image, path)

    def get_image(self, image_id: str) -> StoredImage | None:
        stored = self.images.get(image_id)
        return copy.deepcopy(stored) if stored else None

    def list_images(self) -> list[StoredImage]:
        return [copy.deepcopy(s) for s in sorted(self.images.values(), key=lambda s: s.image.created_at)]

    def set_default_image(self, image_id: str) -> None:
        for key, stored in self.images.items():
            img = stored.image
            self.images[key] = StoredImage(
                Image(img.id, img.name, img.description, img.rootfs_size_mb, key == image_id, img.created_at),
                stored.path,
            )

    def update_image_size(self, image_id: str, rootfs_size_mb: int) -> None:
        stored = self.images[image_id]
        self.images[image_id] = StoredImage(
            dataclasses.replace(stored.image, rootfs_size_mb=rootfs_size_mb), stored.path
        )

    def delete_image(self, image_id: str) -> None:
        self.images.pop(image_id, None)

    def add_snapshot(self, snap: Snapshot) -> None:
        if snap.id in self.snapshots:
            raise StoreError(f"duplicate snapshot {snap.id}")
        self.snapshots[snap.id] = copy.deepcopy(snap)

    def get_snapshot(self, snapshot_id: str) -> Snapshot | None:
        snap = self.snapshots.get(snapshot_id)
        return copy.deepcopy(snap) if snap else None

    def list_snapshots(self) -> list[Snapshot]:
        return [copy.deepcopy(s) for s in sorted(self.snapshots.values(), key=lambda s: (s.created_at, s.id))]

    def delete_snapshot(self, snapshot_id: str) -> None:
        self.snapshots.pop(snapshot_id, None)

    def add_api_key(self, key: ApiKey) -> None:
        if key.key_hash in self.keys:
            raise StoreError("duplicate API key")
        self.keys[key.key_hash] = key

    def find_api_key(self, key_hash: str) -> ApiKey | None:
        return self.keys.get(key_hash)

    def get_api_key(self, key_id: str) -> ApiKey | None:
        return next((k for k in self.keys.values() if k.id == key_id), None)

    def list_api_keys(self, user_id: str) -> list[ApiKey]:
        return sorted((k for k in self.keys.values() if k.user_id == user_id), key=lambda k: k.created_at)

    def delete_api_key(self, key_id: str) -> None:
        self.keys = {h: k for h, k in self.keys.items() if k.id != key_id}

    def delete_user_api_keys(self, user_id: str) -> int:
        before = len(self.keys)
        self.keys = {h: k for h, k in self.keys.items() if k.user_id != user_id}
        return before - len(self.keys)

    def count_api_keys(self) -> int:
        return len(self.keys)

    def add_user(self, user: User) -> None:
        if self.get_user_by_name(user.username) is not None:
            raise StoreError(f"user {user.username} exists")
        self.users[user.id] = copy.deepcopy(user)

    def save_user(self, user: User) -> None:
        self.users[user.id] = copy.deepcopy(user)

    def get_user(self, user_id: str) -> User | None:
        user = self.users.get(user_id)
        return copy.deepcopy(user) if user else None

    def delete_user(self, user_id: str) -> None:
        self.delete_user_api_keys(user_id)
        self.users.pop(user_id, None)

    def get_user_by_name(self, username: str) -> User | None:
        return next((copy.deepcopy(u) for u in self.users.values() if u.username == username), None)

    def list_users(self) -> list[User]:
        return [copy.deepcopy(u) for u in self.users.values()]

    def close(self) -> None:
        pass

    def add_record(self, rec: Record) -> None:
        table = self.records.setdefault(type(rec), {})
        if rec.id in table:
            raise StoreError(f"duplicate {type(rec).__name__} {rec.id}")
        table[rec.id] = copy.deepcopy(rec)

    def save_record(self, rec: Record) -> None:
        table = self.records.setdefault(type(rec), {})
        if rec.id in table:
            table[rec.id] = copy.deepcopy(rec)

    def get_record(self, kind: type[R], record_id: str) -> R | None:
        rec = self.records.get(kind, {}).get(record_id)
        return copy.deepcopy(rec) if isinstance(rec, kind) else None

    def list_records(self, kind: type[R]) -> list[R]:
        recs = [r for r in self.records.get(kind, {}).values() if isinstance(r, kind)]
        return [copy.deepcopy(r) for r in sorted(recs, key=lambda r: (r.created_at, r.id))]

    def delete_record(self, kind: type[R], record_id: str) -> None:
        self.records.get(kind, {}).pop(record_id, None)

    def wipe(self) -> None:
        for table in (self.vms, self.keys, self.users, self.snapshots, self.exec_logs):
            table.clear()
        self._vms_version += 1
        nodes = self.records.get(NodeRecord, {})
        self.records.clear()
        self.records[NodeRecord] = nodes

    def lead(self) -> bool:
        return True

    def rate_hit(self, key: str, limit: int, window_s: float, now: float) -> tuple[bool, int, float]:
        hits = [t for t in self.rate_hits.get(key, []) if t > now - window_s]
        self.rate_hits[key] = hits
        if len(hits) >= limit:
            return False, len(hits), hits[0]
        hits.append(now)
        return True, len(hits), hits[0]
