from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, inspect, text

from sheesh.models import (
    ApiKey,
    FirewallAction,
    FirewallRule,
    Image,
    NodeRecord,
    NodeState,
    PortForward,
    ProvisionMode,
    Role,
    TimeoutAction,
    User,
    Vm,
    VmState,
)
from sheesh.store.errors import StoreError
from sheesh.store.memory import MemoryStore
from sheesh.store.repo import SqlStore, Store
from tests.postgres import Postgres


def _vm(vm_id: str, ip: str) -> Vm:
    return Vm(
        id=vm_id,
        state=VmState.RUNNING,
        cpu=1,
        mem_mb=256,
        allow_ips=["10.0.0.0/8"],
        outbound_internet=True,
        image_id="img-a",
        disk_size_mb=1024,
        guest_ip=ip,
        created_at=datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC),
        provision_mode=ProvisionMode.BOOT,
    )


@pytest.fixture(params=["sqlite", "postgresql", "memory"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    if request.param == "memory":
        yield MemoryStore()
        return
    url = (
        f"sqlite:///{tmp_path / 'db' / 'sheesh.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("postgres").new_database()
    )
    sql = SqlStore(url)
    yield sql
    sql.close()


def test_vm_roundtrip_update_delete(store: Store) -> None:
    vm = _vm("vm-1", "172.16.0.2")
    store.add_vm(vm)
    got = store.get_vm("vm-1")
    assert got == vm
    vm.state = VmState.STOPPED
    vm.error = "boom"
    vm.expires_at, vm.on_timeout = datetime(2027, 5, 6, 7, 8, 9, tzinfo=UTC), TimeoutAction.PAUSE
    store.save_vm(vm)
    assert store.get_vm("vm-1") == vm
    assert store.used_ips() == {"172.16.0.2"}
    store.delete_vm("vm-1")
    assert store.get_vm("vm-1") is None and store.list_vms() == []


def test_hot_reads_type_every_column_as_the_other_reads(store: Store) -> None:
    """``get_vm``, ``find_api_key`` and the user reads skip SQLAlchemy's result processing (``hotreads``): JSON,
    times and booleans come back typed as through ``list_vms``/``list_users`` (SQLite stores them as text and
    integers; 1 == True would hide an integer from ``==``)."""
    vm = _vm("vm-1", "172.16.0.2")
    vm.firewall = [FirewallRule("10.1.0.0/16", FirewallAction.ACCEPT), FirewallRule("0.0.0.0/0", FirewallAction.DROP)]
    vm.ports = [PortForward(22, 40022), PortForward(53, 40053, "udp")]
    vm.vpn_network, vm.owner_id, vm.auto_paused = "10.99.0.0/24", "usr-1", True
    vm.expires_at = datetime(2027, 5, 6, 7, 8, 9, 123456, tzinfo=UTC)
    store.add_vm(vm)
    got = store.get_vm("vm-1")
    assert got == vm and got == store.list_vms()[0]
    assert got.outbound_internet is True and got.auto_paused is True and got.created_at.tzinfo is not None
    now = datetime.now(UTC)
    user = User(id="usr-1", username="alice", password_hash="h", role=Role.ADMIN, created_at=now, totp_enabled=True)
    store.add_user(user)
    assert store.get_user("usr-1") == user == store.get_user_by_name("alice") == store.list_users()[0]
    assert store.get_user("usr-1").totp_enabled is True  # type: ignore[union-attr]
    key = ApiKey(id="key-1", user_id="usr-1", label="ci", key_hash="abc", created_at=now, expires_at=None)
    store.add_api_key(key)
    assert store.find_api_key("abc") == key and store.find_api_key("nope") is None


def test_a_hot_read_the_driver_fails_is_a_store_error(tmp_path: Path) -> None:
    """The driver's own error becomes StoreError (the API's 503), and the pool goes on serving."""
    sql = SqlStore(f"sqlite:///{tmp_path / 'sheesh.db'}")
    with sql.engine.begin() as conn:
        conn.execute(text("DROP TABLE api_keys"))
    with pytest.raises(StoreError, match="database error: no such table"):
        sql.find_api_key("abc")
    assert sql.get_vm("vm-1") is None and sql.get_user_by_name("alice") is None
    sql.close()


def test_every_vm_write_moves_the_vms_version(store: Store) -> None:
    seen = [store.vms_version()]

    def moved() -> bool:
        seen.append(store.vms_version())
        return seen[-1] > seen[-2]

    vm = _vm("vm-1", "172.16.0.2")
    store.add_vm(vm)
    assert moved()
    assert store.list_vms() and not moved()  # reads do not
    vm.state = VmState.STOPPED
    store.save_vm(vm)
    assert moved()
    store.delete_vm("vm-1")
    assert moved()
    store.add_vm(_vm("vm-2", "172.16.0.3"))
    store.wipe()
    assert store.vms_version() > seen[-1] + 1


def test_another_replica_sees_the_vms_version_move(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db' / 'sheesh.db'}"
    one, two = SqlStore(url), SqlStore(url)
    try:
        before = two.vms_version()
        one.add_vm(_vm("vm-1", "172.16.0.2"))
        assert two.vms_version() == before + 1
    finally:
        one.close()
        two.close()


def test_duplicate_address_is_refused(store: Store) -> None:
    store.add_vm(_vm("vm-1", "172.16.0.2"))
    with pytest.raises(Exception):  # noqa: B017 - IntegrityError or StoreError
        store.add_vm(_vm("vm-2", "172.16.0.2"))


def test_images_default_and_keys(store: Store, tmp_path: Path) -> None:
    now = datetime.now(UTC)
    store.add_image(Image("img-a", "a", "", 512, False, now), tmp_path / "a")
    store.add_image(Image("img-b", "b", "", 512, False, now), tmp_path / "b")
    store.set_default_image("img-b")
    defaults = [s.image.id for s in store.list_images() if s.image.is_default]
    assert defaults == ["img-b"]
    stored = store.get_image("img-a")
    assert stored is not None and stored.path == tmp_path / "a"
    store.add_api_key(
        ApiKey(
            id="key-1",
            user_id="usr-1",
            label="label",
            key_hash="abc",
            created_at=now,
            expires_at=now + timedelta(days=1),
        )
    )
    store.add_api_key(ApiKey(id="key-2", user_id="usr-2", label="other", key_hash="def", created_at=now))
    found = store.find_api_key("abc")
    assert found is not None and found.user_id == "usr-1" and found.expires_at == now + timedelta(days=1)
    assert store.find_api_key("abd") is None
    assert store.get_api_key("key-2") is not None and store.get_api_key("key-9") is None
    assert [k.id for k in store.list_api_keys("usr-1")] == ["key-1"]
    assert store.count_api_keys() == 2
    assert store.delete_user_api_keys("usr-1") == 1 and store.find_api_key("abc") is None
    store.delete_api_key("key-2")
    assert store.count_api_keys() == 0


def test_users(store: Store) -> None:
    now = datetime.now(UTC)
    user = User(id="usr-1", username="alice", password_hash="hash", role=Role.USER, created_at=now)
    store.add_user(user)
    with pytest.raises(Exception):  # noqa: B017 - IntegrityError or StoreError
        store.add_user(User(id="usr-2", username="alice", password_hash="hash", role=Role.USER, created_at=now))
    user.failed_logins = 3
    user.locked_until = now + timedelta(minutes=5)
    store.save_user(user)
    assert store.get_user("usr-1") == user
    assert store.get_user_by_name("alice") == user and store.get_user_by_name("bob") is None
    assert [u.id for u in store.list_users()] == ["usr-1"]


def test_sql_store_migrates_and_persists(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'sheesh.db'}"
    first = SqlStore(url)
    first.add_vm(_vm("vm-9", "172.16.0.9"))
    first.close()
    second = SqlStore(url)
    tables = set(inspect(second.engine).get_table_names())
    assert {"vms", "images", "api_keys", "alembic_version"} <= tables
    assert [v.id for v in second.list_vms()] == ["vm-9"]


def test_a_database_from_a_newer_sheesh_is_refused_by_name(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    SqlStore(url).close()
    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '9999'"))
    engine.dispose()
    with pytest.raises(StoreError, match="revision 9999, newer than this sheesh knows"):
        SqlStore(url)


def test_exec_logs_newest_first_bounded_and_gone_with_the_vm(store: Store) -> None:
    from sheesh.models import ExecKind, ExecLog

    store.add_vm(_vm("vm-1", "172.16.0.2"))
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(7):
        kind = ExecKind.EXEC if i % 2 else ExecKind.RUN_TS
        entry = ExecLog(
            id=f"xl-{i}",
            vm_id="vm-1",
            kind=kind,
            command=f"cmd {i}",
            started_at=base + timedelta(seconds=i),
            duration_ms=1.5,
            exit_code=i,
            stdout_tail="out",
        )
        store.add_exec_log(entry, keep=5)
    got = store.list_exec_logs("vm-1", None, 100)
    assert [e.id for e in got] == ["xl-6", "xl-5", "xl-4", "xl-3", "xl-2"]
    assert got[0].started_at == base + timedelta(seconds=6) and got[0].stdout_tail == "out"
    assert [e.id for e in store.list_exec_logs("vm-1", ExecKind.EXEC, 2)] == ["xl-5", "xl-3"]
    store.delete_vm("vm-1")
    assert store.list_exec_logs("vm-1", None, 100) == []


def test_rerobots_records_round_trip_and_wipe(store: Store) -> None:
    from sheesh.store.errors import StoreError
    from sheesh.workspaces import Instance, InstanceStatus, WorkspaceType

    made = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    wtype = WorkspaceType(id="basic_vm", cpu=1, mem_mb=256, created_at=made)
    inst = Instance(
        id="i-1",
        owner_id="usr-a",
        deployment="d-1",
        type="basic_vm",
        region="local",
        status=InstanceStatus.INIT,
        created_at=made,
        public_key="ssh-ed25519 AAAA x",
        hostkeys=["ssh-ed25519 BBBB root@sheesh"],
    )
    store.add_record(wtype)
    store.add_record(inst)
    with pytest.raises(StoreError):
        store.add_record(inst)
    assert store.get_record(Instance, "i-1") == inst and store.get_record(WorkspaceType, "i-1") is None
    inst.status, inst.ended_at = InstanceStatus.TERMINATED, made + timedelta(hours=1)
    store.save_record(inst)
    got = store.get_record(Instance, "i-1")
    assert got is not None and got.status == InstanceStatus.TERMINATED and got.ended_at == inst.ended_at
    got.hostkeys.append("changed")  # a copy
    assert store.get_record(Instance, "i-1") == inst
    assert store.list_records(Instance) == [inst] and store.list_records(WorkspaceType) == [wtype]
    store.delete_record(Instance, "i-1")
    assert store.get_record(Instance, "i-1") is None
    store.add_vm(_vm("vm-1", "172.16.0.2"))
    store.wipe()
    assert store.list_vms() == [] and store.list_records(WorkspaceType) == [] and store.list_users() == []


def test_rate_hits_are_counted_in_a_sliding_window(store: Store) -> None:
    assert [store.rate_hit("global|user:a", 3, 60.0, 1000.0 + i)[:2] for i in range(3)] == [
        (True, 1),
        (True, 2),
        (True, 3),
    ]
    assert store.rate_hit("global|user:a", 3, 60.0, 1010.0) == (False, 3, 1000.0), "refused hits do not count"
    assert store.rate_hit("global|user:b", 3, 60.0, 1010.0)[:2] == (True, 1), "each key its own budget"
    assert store.rate_hit("global|user:a", 3, 60.0, 1060.5) == (True, 3, 1001.0), "the oldest left the window"


def test_one_leader_at_a_time_on_postgresql(postgres: Postgres) -> None:
    url = postgres.new_database()
    first, second = SqlStore(url), SqlStore(url)
    try:
        assert first.lead() and first.lead(), "the leader stays the leader"
        assert not second.lead()
        first.close()
        assert second.lead(), "a leader that goes away frees the lock"
    finally:
        second.close()


def test_wipe_keeps_the_nodes(store: Store) -> None:
    node = NodeRecord(id="n1", region="eu", address="10.0.0.2", state=NodeState.READY, created_at=datetime.now(UTC))
    store.add_record(node)
    store.wipe()
    assert [n.id for n in store.list_records(NodeRecord)] == ["n1"]
