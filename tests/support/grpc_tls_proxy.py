"""A TLS-terminating gRPC proxy in front of a plaintext Temporal dev server, as Temporal Cloud
or a self-hosted cluster with TLS looks to a client.

Every method is forwarded as raw bytes (a generic pass-through handler): Temporal's
WorkflowService, OperatorService and the health service are all unary, long polls included.
Two ways to refuse a client, as the servers it stands for do:
- mTLS (`--client-ca`): the TLS handshake requires a client certificate signed by that CA;
- API key (GRPC_PROXY_API_KEY in its environment): every call must carry the metadata
  `authorization: Bearer <key>` (what temporalio sends for `api_key`), else UNAUTHENTICATED;
  with `--key-namespace`, the key is good for that namespace only, as a Temporal Cloud key is
  (a call naming another in its `temporal-namespace` metadata gets PERMISSION_DENIED).

Run as its own process (`GrpcTlsProxy` starts and stops it by its PID), so its event loop and
threads are apart from the test's.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
from pathlib import Path

from tests.support.net import free_port
from tests.support.processes import REPO_ROOT, stop_process

READY = "grpc tls proxy listening"
API_KEY_ENV = "GRPC_PROXY_API_KEY"
# Metadata the proxy handles itself and does not hand on.
_HOP_BY_HOP = {"authorization", "user-agent"}
_UNLIMITED = [("grpc.max_send_message_length", -1), ("grpc.max_receive_message_length", -1)]


class GrpcTlsProxy:
    """The proxy process on 127.0.0.1:`port`, forwarding to `upstream` (host:port)."""

    def __init__(
        self,
        upstream: str,
        *,
        cert: Path,
        key: Path,
        log_path: Path,
        client_ca: Path | None = None,
        api_key: str | None = None,
        key_namespace: str | None = None,
    ) -> None:
        self.upstream, self.cert, self.key, self.client_ca = upstream, cert, key, client_ca
        self.api_key, self.key_namespace, self.log_path = api_key, key_namespace, log_path
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> GrpcTlsProxy:
        argv = [
            sys.executable, "-m", "tests.support.grpc_tls_proxy",
            "--port", str(self.port), "--upstream", self.upstream,
            "--cert", str(self.cert), "--key", str(self.key),
        ]  # fmt: skip
        if self.client_ca is not None:
            argv += ["--client-ca", str(self.client_ca)]
        if self.key_namespace is not None:
            argv += ["--key-namespace", self.key_namespace]
        env = {k: v for k, v in os.environ.items() if k != API_KEY_ENV}
        if self.api_key is not None:
            env[API_KEY_ENV] = self.api_key
        with open(self.log_path, "ab") as log:
            self._process = subprocess.Popen(
                argv, cwd=REPO_ROOT, env={**env, "PYTHONUNBUFFERED": "1"}, stdout=log,
                stderr=subprocess.STDOUT,
            )  # fmt: skip
        deadline = time.monotonic() + timeout
        while READY not in self.log():
            if self._process.poll() is not None:
                raise RuntimeError(f"the proxy exited:\n{self.log()[-3000:]}")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"the proxy is not listening after {timeout}s")
            time.sleep(0.05)
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        process, self._process = self._process, None
        stop_process(process)

    def __enter__(self) -> GrpcTlsProxy:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# --- The proxy process ---------------------------------------------------------------------


def _handler(upstream: object, api_key: str | None, key_namespace: str | None) -> object:
    import grpc

    expected = f"Bearer {api_key}" if api_key is not None else None

    class PassThrough(grpc.GenericRpcHandler):
        def service(self, handler_call_details: grpc.HandlerCallDetails) -> object:
            method = handler_call_details.method
            forward = upstream.unary_unary(method)  # no (de)serializers: raw bytes both ways

            async def unary(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
                metadata = [(k, v) for k, v in context.invocation_metadata() or ()]
                if expected is not None:
                    given = [v for k, v in metadata if k == "authorization"]
                    if given != [expected]:
                        await context.abort(
                            grpc.StatusCode.UNAUTHENTICATED, "missing or invalid API key"
                        )
                    namespace = dict(metadata).get("temporal-namespace")
                    if key_namespace is not None and namespace not in (None, key_namespace):
                        await context.abort(
                            grpc.StatusCode.PERMISSION_DENIED, "Request unauthorized."
                        )
                passed = [(k, v) for k, v in metadata if k not in _HOP_BY_HOP]
                remaining = context.time_remaining()
                try:
                    return await forward(request, metadata=passed, timeout=remaining)
                except grpc.aio.AioRpcError as exc:
                    # Trailing metadata holds Temporal's error details (e.g. NamespaceNotFound).
                    trailers = tuple(
                        (k, v) for k, v in (exc.trailing_metadata() or ()) if k != "grpc-status"
                    )
                    await context.abort(exc.code(), exc.details() or "", trailers)
                    raise  # unreachable: abort raises

            return grpc.unary_unary_rpc_method_handler(unary)

    return PassThrough()


def _credentials(args: argparse.Namespace) -> object:
    import grpc

    client_ca = Path(args.client_ca).read_bytes() if args.client_ca else None
    return grpc.ssl_server_credentials(
        [(Path(args.key).read_bytes(), Path(args.cert).read_bytes())],
        root_certificates=client_ca,
        require_client_auth=client_ca is not None,
    )


async def _serve(
    port: int, upstream_address: str, credentials: object, key_namespace: str | None
) -> None:
    import grpc

    upstream = grpc.aio.insecure_channel(upstream_address, options=_UNLIMITED)
    server = grpc.aio.server(options=_UNLIMITED)
    handler = _handler(upstream, os.environ.get(API_KEY_ENV), key_namespace)
    server.add_generic_rpc_handlers((handler,))
    server.add_secure_port(f"127.0.0.1:{port}", credentials)
    await server.start()
    print(f"{READY} on 127.0.0.1:{port} (upstream {upstream_address})", flush=True)
    await server.wait_for_termination()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m tests.support.grpc_tls_proxy")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--upstream", required=True)
    parser.add_argument("--cert", required=True)
    parser.add_argument("--key", required=True)
    parser.add_argument("--client-ca")
    parser.add_argument("--key-namespace")
    args = parser.parse_args()
    try:
        asyncio.run(_serve(args.port, args.upstream, _credentials(args), args.key_namespace))
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
