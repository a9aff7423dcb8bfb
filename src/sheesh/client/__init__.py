"""The sheesh Python SDK (needs only httpx and websockets).

Example::

    from sheesh.client import Sheesh

    client = Sheesh(base_url="http://127.0.0.1:3000", api_key="...")  # or SHEESH_URL / SHEESH_API_KEY
    with client.vms.create(cpu=1, mem_mb=256, allow_ips=["172.16.0.1/32"]) as vm:
        print(vm.exec("echo hello").stdout)
        vm.exec_stream("for i in 1 2 3; do echo $i; sleep 1; done", on_stdout=print)
        vm.files.upload("./src", "/workspace/src")
        print(vm.run_ts("result.set(6 * 7)").result)

``AsyncSheesh`` is the same for asyncio. Errors are ``sheesh.client.errors`` classes (``NotFoundError``, ...).
"""

from sheesh.client._async import AsyncSheesh, AsyncVm
from sheesh.client._sync import Sheesh, Vm
from sheesh.client.errors import (
    APIConnectionError,
    APIError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    ConfigurationError,
    ConflictError,
    InternalServerError,
    NotFoundError,
    PayloadTooLargeError,
    PermissionDeniedError,
    RateLimitError,
    ServiceUnavailableError,
    SheeshClientError,
    StreamError,
)
from sheesh.client.streaming import AsyncExecSession, ExecSession
from sheesh.client.types import (
    ApiKey,
    ExecLog,
    ExecResult,
    Image,
    PortForward,
    ScriptResult,
    Snapshot,
    StreamResult,
    User,
    VmInfo,
)
from sheesh.execstream import StreamExit, StreamOutput

__all__ = [
    "APIConnectionError",
    "APIError",
    "APITimeoutError",
    "ApiKey",
    "AsyncExecSession",
    "AsyncSheesh",
    "AsyncVm",
    "AuthenticationError",
    "BadRequestError",
    "ConfigurationError",
    "ConflictError",
    "ExecLog",
    "ExecResult",
    "ExecSession",
    "Image",
    "InternalServerError",
    "NotFoundError",
    "PayloadTooLargeError",
    "PermissionDeniedError",
    "PortForward",
    "RateLimitError",
    "ScriptResult",
    "ServiceUnavailableError",
    "Sheesh",
    "SheeshClientError",
    "Snapshot",
    "StreamError",
    "StreamExit",
    "StreamOutput",
    "StreamResult",
    "User",
    "Vm",
    "VmInfo",
]
