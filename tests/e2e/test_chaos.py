"""Restarts and database cuts under load show clients nothing but UNAVAILABLE, which they retry:
two inventory replicas on one PostgreSQL database, reached through a TCP proxy the test cuts,
take concurrent stock changes while one replica is restarted and the database link is cut;
afterwards every ledger adds up, every accepted change is in it exactly once, and the pools
hold nothing."""

from __future__ import annotations

import random
import socket
import threading
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from sqlalchemy.engine import make_url

from inventory.v1 import inventory_pb2 as pb
from inventory.v1 import inventory_pb2_grpc
from tests.helpers import (
    ServiceProcess,
    all_pages,
    authorized_channel,
    create,
    eventually,
    free_port,
    migrate,
    mint,
    service_env,
)

POOL_SIZE = 4  # and as many again in overflow: at most 8 connections a replica, 100 are shared on the server
MOST_CONNECTIONS = 2 * POOL_SIZE
WRITERS = 8
ITEMS = 4
RUN_S = 15.0
RETRIED = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.RESOURCE_EXHAUSTED}
# What a change may take when a replica or the database is away, retries included.
CHANGE_GIVES_UP_AFTER_S = 30.0


class CuttableProxy:
    """A loopback TCP proxy to `upstream` that the test can cut: every connection closed and
    new ones refused for a while, as a network outage or a database failover does."""

    def __init__(self, upstream: tuple[str, int]) -> None:
        self._upstream = upstream
        self._lock = threading.Lock()
        self._connections: set[socket.socket] = set()
        self._stopped = threading.Event()
        self._listener: socket.socket | None = self._listen(0)
        self.port = self._listener.getsockname()[1]
        self.connections_cut = 0
        self.most_connections = 0  # the most database connections open through it at once
        self._accepting = threading.Thread(target=self._accept, name="proxy-accept", daemon=True)
        self._accepting.start()

    def cut(self, for_s: float) -> None:
        """Closes every connection and refuses new ones (nothing listens) for `for_s` seconds."""
        with self._lock:
            listener, self._listener = self._listener, None
            connections, self._connections = self._connections, set()
            self.connections_cut += len(connections) // 2
        if listener is not None:
            _close(listener)
        for connection in connections:
            _close(connection)
        time.sleep(for_s)
        with self._lock:
            self._listener = self._listen(self.port)

    def close(self) -> None:
        self._stopped.set()
        self._accepting.join(timeout=5)
        with self._lock:
            for connection in [*self._connections, *([self._listener] if self._listener else [])]:
                _close(connection)
            self._connections.clear()

    def _listen(self, port: int) -> socket.socket:
        listener = socket.socket()
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", port))
        listener.listen(64)
        listener.settimeout(0.1)
        return listener

    def _accept(self) -> None:
        while not self._stopped.is_set():
            with self._lock:
                listener = self._listener
            if listener is None:
                time.sleep(0.02)
                continue
            try:
                client, _ = listener.accept()
            except OSError:  # a timeout, or the listener was closed by a cut
                continue
            client.settimeout(None)
            try:
                server = socket.create_connection(self._upstream, timeout=5)
            except OSError:
                _close(client)
                continue
            server.settimeout(None)
            with self._lock:
                if self._listener is not listener:  # cut while this one was connecting
                    _close(client), _close(server)
                    continue
                self._connections |= {client, server}
                self.most_connections = max(self.most_connections, len(self._connections) // 2)
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            with self._lock:
                self._connections -= {source, target}
            _close(source), _close(target)


def _close(connection: socket.socket) -> None:
    try:
        connection.shutdown(socket.SHUT_RDWR)  # wakes a thread blocked reading it
    except OSError:
        pass
    connection.close()


@dataclass
class Replica:
    port: int
    log_dir: Path
    database_url: str
    process: ServiceProcess | None = None
    starts: int = 0
    stopped_processes: list[ServiceProcess] = field(default_factory=list)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self.starts += 1
        env = service_env(
            INVENTORY_DATABASE_URL=self.database_url,
            INVENTORY_LISTEN_ADDRESS=self.address,
            INVENTORY_PROCESSES="1",
            INVENTORY_DB_POOL_SIZE=str(POOL_SIZE),
            INVENTORY_MAX_WORKERS=str(MOST_CONNECTIONS),
            INVENTORY_SHUTDOWN_GRACE_S="5",
        )
        self.process = ServiceProcess(
            "inventory_svc.server", env, self.log_dir / f"inventory-{self.port}-{self.starts}.log"
        )
        self.process.wait_until_serving(self.address)

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
            self.stopped_processes.append(self.process)

    def pool_gauge(self, name: str) -> float:
        assert self.process is not None
        return self.process.metrics().get((name, frozenset()), float("nan"))


@dataclass(frozen=True)
class Unexpected:
    """An attempt that ended with a status other than OK or a retried one."""

    at: float  # time.monotonic()
    replica: int
    code: str
    details: str
    request_id: str


@dataclass
class Outcomes:
    """What the writers saw: every status of every attempt, and the changes accepted."""

    statuses: Counter = field(default_factory=Counter)
    accepted: dict[str, tuple[int, int]] = field(default_factory=dict)  # request_id -> (item id, delta)
    given_up: list[str] = field(default_factory=list)  # request ids of changes no attempt got accepted
    unexpected: list[Unexpected] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def saw(self, code: grpc.StatusCode) -> None:
        with self.lock:
            self.statuses[code.name] += 1


def retry_delay_s(error: grpc.RpcError) -> float:
    status = rpc_status.from_call(error)
    for detail in status.details if status else ():
        info = error_details_pb2.RetryInfo()
        if detail.Unpack(info):
            return info.retry_delay.ToTimedelta().total_seconds()
    return 0.1


def change_stock(stubs: list, first: int, item_id: int, delta: int, outcomes: Outcomes) -> None:
    """One stock change, retried with its request_id on UNAVAILABLE and RESOURCE_EXHAUSTED,
    each attempt on the next replica, as a client balancing over both would."""
    request_id = str(uuid.uuid4())
    request = pb.AdjustQuantityRequest(id=item_id, delta=delta, request_id=request_id)
    gives_up_at = time.monotonic() + CHANGE_GIVES_UP_AFTER_S
    for attempt in range(10_000):
        try:
            stubs[(first + attempt) % len(stubs)].AdjustQuantity(request, timeout=5)
        except grpc.RpcError as error:
            outcomes.saw(error.code())
            if error.code() not in RETRIED:
                with outcomes.lock:
                    outcomes.unexpected.append(
                        Unexpected(
                            time.monotonic(),
                            (first + attempt) % len(stubs),
                            error.code().name,
                            error.details() or "",
                            request_id,
                        )
                    )
            if error.code() not in RETRIED or time.monotonic() > gives_up_at:
                with outcomes.lock:
                    outcomes.given_up.append(request_id)
                return
            time.sleep(min(retry_delay_s(error), 0.5))
            continue
        outcomes.saw(grpc.StatusCode.OK)
        with outcomes.lock:
            outcomes.accepted[request_id] = (item_id, delta)
        return


def ledger(stub, item_id: int) -> list[pb.StockMovement]:
    pages = all_pages(
        lambda token: stub.ListStockMovements(
            pb.ListStockMovementsRequest(item_id=item_id, page_size=100, page_token=token), timeout=10
        )
    )
    return [movement for page in pages for movement in page.movements]


@contextmanager
def replicas_behind_a_proxy(postgres_url: str, log_dir: Path) -> Iterator[tuple[CuttableProxy, list[Replica]]]:
    migrate(postgres_url)
    url = make_url(postgres_url)
    proxy = CuttableProxy((url.host or "127.0.0.1", url.port or 5432))
    proxied_url = url.set(host="127.0.0.1", port=proxy.port).render_as_string(hide_password=False)
    replicas = [Replica(free_port(), log_dir, proxied_url) for _ in range(2)]
    try:
        for replica in replicas:
            replica.start()
        yield proxy, replicas
    finally:
        for replica in replicas:
            replica.stop()
        proxy.close()


class PoolSampler:
    """Reads each running replica's db_pool_connections_open every few hundred ms: its highest."""

    def __init__(self, replicas: list[Replica]) -> None:
        self._replicas = replicas
        self.highest = 0.0
        self._stopping = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stopping.wait(0.3):
            for replica in self._replicas:
                try:
                    self.highest = max(self.highest, replica.pool_gauge("db_pool_connections_open"))
                except Exception:  # noqa: BLE001 a replica being restarted has no /metrics for a moment
                    pass

    def stop(self) -> None:
        self._stopping.set()
        self._thread.join(timeout=5)


def test_restarts_and_database_cuts_show_writers_only_retried_unavailable_and_lose_or_repeat_nothing(
    postgres_url, tmp_path
):
    with replicas_behind_a_proxy(postgres_url, tmp_path) as (proxy, replicas), ExitStack() as channels:
        stubs = [
            inventory_pb2_grpc.ItemServiceStub(
                channels.enter_context(
                    authorized_channel(
                        replica.address,
                        mint("chaos-writer"),
                        (("grpc.initial_reconnect_backoff_ms", 100), ("grpc.max_reconnect_backoff_ms", 500)),
                    )
                )
            )
            for replica in replicas
        ]
        items = [create(stubs[number % 2], quantity=10_000) for number in range(ITEMS)]
        outcomes = Outcomes()
        stopping = threading.Event()

        def writer(number: int) -> None:
            chooser = random.Random(number)
            while not stopping.is_set():
                item = chooser.choice(items)
                change_stock(stubs, number, item.id, chooser.choice([-3, -2, -1, 1, 2, 3]), outcomes)

        sampler = PoolSampler(replicas)
        threads = [threading.Thread(target=writer, args=(number,), daemon=True) for number in range(WRITERS)]
        started = time.monotonic()
        for thread in threads:
            thread.start()

        time.sleep(3)
        stopping_at = time.monotonic()
        replicas[0].stop()  # SIGTERM, as a deployment restarts a pod
        stopped_at = time.monotonic()
        replicas[0].start()
        time.sleep(max(0.0, 8 - (time.monotonic() - started)))
        proxy.cut(for_s=1.5)
        time.sleep(max(0.0, RUN_S - (time.monotonic() - started)))

        stopping.set()
        for thread in threads:
            thread.join(timeout=CHANGE_GIVES_UP_AFTER_S + 10)
        sampler.stop()
        assert not any(thread.is_alive() for thread in threads)

        ledgers = {item.id: ledger(stubs[1], item.id) for item in items}
        quantities = {item.id: stubs[1].GetItem(pb.GetItemRequest(id=item.id)).item.quantity for item in items}
        idle = eventually(lambda: all(replica.pool_gauge("db_pool_connections_in_use") == 0 for replica in replicas), 5)
        in_use = [replica.pool_gauge("db_pool_connections_in_use") for replica in replicas]
        open_now = [replica.pool_gauge("db_pool_connections_open") for replica in replicas]

    print(
        f"statuses seen: {dict(outcomes.statuses)}; changes accepted: {len(outcomes.accepted)}; "
        f"database connections cut: {proxy.connections_cut}; most through the proxy: {proxy.most_connections}; "
        f"highest pool connections open: {sampler.highest}"
    )
    assert proxy.connections_cut > 0, "the cut met no connection: it proved nothing"
    assert outcomes.statuses[grpc.StatusCode.UNAVAILABLE.name] > 0, "nothing was unavailable: the chaos missed"
    # grpc core ends the calls a server has received but not yet handed to a handler when it
    # shuts down with CANCELLED (grpc/grpc#41785, fix proposed in grpc/grpc#41786): no handler
    # ran, so nothing changed, but the client is told CANCELLED, not UNAVAILABLE (our clients
    # retry those reads). Those, and only those, are set apart here: on the replica being
    # stopped, while it stopped, never served, and (below) never applied.
    served_cancelled = [
        line
        for process in replicas[0].stopped_processes
        for line in process.log_lines()
        if line.get("grpc_code") == "CANCELLED"
    ]
    at_shutdown = [
        u
        for u in outcomes.unexpected
        if u.code == "CANCELLED" and u.replica == 0 and stopping_at <= u.at <= stopped_at + 0.5
    ]
    unexplained = [u for u in outcomes.unexpected if u not in at_shutdown]
    assert unexplained == [], f"statuses seen: {dict(outcomes.statuses)}; unexpected: {unexplained}"
    assert served_cancelled == [], "a call the stopped replica was serving was cancelled"
    assert sorted(outcomes.given_up) == sorted(u.request_id for u in at_shutdown), "a change was never accepted"
    for item in items:
        assert sum(movement.delta for movement in ledgers[item.id]) == quantities[item.id]
    recorded = Counter(
        movement.request_id for movements in ledgers.values() for movement in movements if movement.request_id
    )
    assert {request_id for request_id, times in recorded.items() if times > 1} == set(), "a change was applied twice"
    assert set(recorded) == set(outcomes.accepted), "the ledger and the accepted changes differ"
    for movements in ledgers.values():
        for movement in movements:
            if movement.request_id:
                assert outcomes.accepted[movement.request_id] == (movement.item_id, movement.delta)
    # What the database saw, through the proxy: each replica's pool (with its overflow) and the
    # change listener's connection of its own; a restarted replica's old pool is gone by then.
    assert proxy.most_connections <= 2 * (MOST_CONNECTIONS + 1), proxy.most_connections
    assert idle, f"database connections still lent out when idle: {in_use}"
    assert max(open_now) <= MOST_CONNECTIONS, f"pools hold {open_now} connections, more than {MOST_CONNECTIONS}"
    assert sampler.highest <= MOST_CONNECTIONS, f"a pool held {sampler.highest} connections"
