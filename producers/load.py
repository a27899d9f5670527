"""`cdcflow load`: realistic traffic against the three services over HTTP (httpx), at a target request rate.

Visitors browse (page views, now and then a batch of them); some buy a product: purchase (stock down) →
order created → payment → shipping → delivery, with a few cancellations before shipping and a few refunds
after delivery. Follow-up steps of an order are scheduled a little later, so many orders are in flight.
The dispatcher issues one request every 1/rate seconds (absolute schedule); when every worker is busy the
tick is counted as `behind` instead of queueing without bound. The report gives achieved rates per action.
"""

from __future__ import annotations

import heapq
import itertools
import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import httpx

from cdc.http_api import ApiKind, auth_headers
from cdc.logs import get_logger
from cdc.settings import Settings

log = get_logger(__name__)


@dataclass(frozen=True)
class Targets:
    """Base URLs of the services, and the headers every request carries (the write key, when configured)."""

    product: str
    order: str
    clickstream: str
    headers: dict[str, str] = field(default_factory=dict, repr=False)  # holds the key: never printed

    @classmethod
    def from_settings(cls, settings: Settings) -> Targets:
        host = settings.services_host
        if host in ("0.0.0.0", "::"):  # listening everywhere: reach it on loopback
            host = "127.0.0.1"
        return cls(
            product=f"http://{host}:{settings.product_port}",
            order=f"http://{host}:{settings.order_port}",
            clickstream=f"http://{host}:{settings.clickstream_port}",
            headers=auth_headers(settings, ApiKind.WRITE),
        )


@dataclass(frozen=True)
class Mix:
    """Behaviour of the simulated visitors (probabilities per visit or per order)."""

    buy: float = 0.15  # a visit ends in a purchase
    batch: float = 0.1  # page views sent as one batch of several
    cancel: float = 0.05  # an order is cancelled before shipping
    refund: float = 0.05  # a delivered order is refunded
    step_delay: float = 0.2  # seconds between an order's lifecycle steps
    products: int = 50
    # Visitors come back: a pool of customers, a few of them frequent, so the purchase graph has
    # customers with several orders (and "also bought" has something to say).
    customers: int = 200
    # Popularity is Zipf-shaped (weight of the k-th most popular: 1/k^skew), as on a real shop.
    popularity_skew: float = 0.8


@dataclass
class LoadReport:
    """What a load run achieved."""

    target_rate: float
    duration: float = 0.0
    requests: Counter[str] = field(default_factory=Counter)  # action -> 2xx responses
    events: Counter[str] = field(default_factory=Counter)  # action -> events written (expected)
    failures: Counter[str] = field(default_factory=Counter)  # "action status" -> count
    behind: int = 0
    latency_total: float = 0.0

    @property
    def ok(self) -> int:
        return sum(self.requests.values())

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def rate(self, count: float) -> float:
        return count / self.duration if self.duration > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        return {
            "target_rate": self.target_rate,
            "duration_s": round(self.duration, 3),
            "requests_ok": self.ok,
            "requests_failed": self.failed,
            "achieved_request_rate": round(self.rate(self.ok + self.failed), 1),
            "achieved_ok_rate": round(self.rate(self.ok), 1),
            "events_written": sum(self.events.values()),
            "achieved_event_rate": round(self.rate(sum(self.events.values())), 1),
            "behind": self.behind,
            "mean_latency_ms": round(1000 * self.latency_total / max(1, self.ok + self.failed), 1),
            "per_action_rate": {k: round(self.rate(v), 1) for k, v in sorted(self.requests.items())},
            "failures": dict(sorted(self.failures.items())),
        }

    def render(self) -> str:
        d = self.as_dict()
        lines = [
            f"target {self.target_rate:g} req/s for {d['duration_s']} s: "
            f"achieved {d['achieved_request_rate']} req/s ({d['achieved_ok_rate']} ok/s), "
            f"{d['achieved_event_rate']} events/s, "
            f"mean latency {d['mean_latency_ms']} ms, behind {self.behind}",
        ]
        for action, count in sorted(self.requests.items()):
            lines.append(f"  {action:<12} {count:>7} ok  {self.rate(count):8.1f}/s")
        for key, count in sorted(self.failures.items()):
            lines.append(f"  failed {key:<20} {count:>7}")
        return "\n".join(lines)


Action = Callable[[], None]


class LoadGenerator:
    """Runs the simulated visitors against `targets`; `run(rate, duration)` returns the report."""

    def __init__(
        self,
        targets: Targets,
        *,
        mix: Mix | None = None,
        seed: int | None = None,
        workers: int = 32,
        timeout: float = 10.0,
    ) -> None:
        self.targets = targets
        self.mix = mix or Mix()
        self.rng = random.Random(seed)
        self.workers = workers
        self.http = httpx.Client(
            timeout=timeout, limits=httpx.Limits(max_connections=workers * 3), headers=targets.headers
        )
        self._lock = threading.Lock()
        self._pending: list[tuple[float, int, Action]] = []  # (due, seq, action) heap of follow-ups
        self._seq = itertools.count()
        self._weights: dict[int, list[float]] = {}
        self.report = LoadReport(target_rate=0.0)

    # -- plumbing ---------------------------------------------------------------------------------------

    def _later(self, delay: float, action: Action) -> None:
        with self._lock:
            heapq.heappush(self._pending, (time.monotonic() + delay, next(self._seq), action))

    def _next_action(self) -> Action:
        with self._lock:
            if self._pending and self._pending[0][0] <= time.monotonic():
                return heapq.heappop(self._pending)[2]
        return self._visit()

    def _request(
        self, action: str, method: str, url: str, events: int = 1, **kwargs: Any
    ) -> httpx.Response | None:
        started = time.monotonic()
        try:
            response = self.http.request(method, url, **kwargs)
        except httpx.HTTPError as exc:
            with self._lock:
                self.report.failures[f"{action} {type(exc).__name__}"] += 1
                self.report.latency_total += time.monotonic() - started
            return None
        with self._lock:
            self.report.latency_total += time.monotonic() - started
            if response.is_success:
                self.report.requests[action] += 1
                self.report.events[action] += events
            else:
                self.report.failures[f"{action} {response.status_code}"] += 1
        return response if response.is_success else None

    # -- behaviour --------------------------------------------------------------------------------------

    def _skewed(self, n: int) -> int:
        """1..n, low numbers more likely (Zipf-shaped popularity)."""
        weights = self._weights.get(n)
        if weights is None:
            skew = self.mix.popularity_skew
            weights = self._weights[n] = list(itertools.accumulate(k**-skew for k in range(1, n + 1)))
        return self.rng.choices(range(1, n + 1), cum_weights=weights)[0]

    def _product(self) -> str:
        return f"p-{self._skewed(self.mix.products):04d}"

    def _visit(self) -> Action:
        """A new visitor's first step: a page view (or a batch), and maybe a purchase later."""
        user = f"u-{self._skewed(self.mix.customers)}"
        product = self._product()
        buys = self.rng.random() < self.mix.buy
        batch = self.rng.random() < self.mix.batch

        def act() -> None:
            if batch:
                views = [
                    {"user_id": user, "url": f"/products/{self._product()}", "referrer": "/"}
                    for _ in range(5)
                ]
                self._request(
                    "pageviews", "POST", f"{self.targets.clickstream}/pageviews/batch", events=5, json=views
                )
            else:
                self._request(
                    "pageview",
                    "POST",
                    f"{self.targets.clickstream}/pageviews",
                    json={
                        "user_id": user,
                        "url": f"/products/{product}",
                        "product_id": product,
                        "referrer": "https://search.example/",
                    },
                )
            if buys:
                self._later(self.mix.step_delay, self._purchase(user, product))

        return act

    def _purchase(self, user: str, product: str) -> Action:
        def act() -> None:
            quantity = self.rng.choice((1, 1, 1, 2, 3))
            r = self._request(
                "purchase",
                "POST",
                f"{self.targets.product}/products/{product}/purchase",
                params={"quantity": quantity, "customer_id": user},
            )
            if r is not None:
                price = self._price(product)
                self._later(self.mix.step_delay, self._create_order(user, product, quantity, price))

        return act

    def _price(self, product: str) -> str:
        # A GET per purchase, as a shop shows the product page first (counts as a request).
        r = self._request("product", "GET", f"{self.targets.product}/products/{product}", events=0)
        return str(r.json()["price"]) if r is not None else "9.99"

    def _create_order(self, user: str, product: str, quantity: int, price: str) -> Action:
        def act() -> None:
            body = {
                "customer_id": user,
                "items": [{"product_id": product, "quantity": quantity, "unit_price": price}],
            }
            r = self._request("create", "POST", f"{self.targets.order}/orders", json=body)
            if r is not None:
                order_id = r.json()["order_id"]
                if self.rng.random() < self.mix.cancel:
                    self._later(self.mix.step_delay, self._step(order_id, "cancel", None))
                else:
                    self._later(self.mix.step_delay, self._step(order_id, "pay", "ship"))

        return act

    def _step(self, order_id: str, step: str, then: str | None) -> Action:
        following = {"ship": "deliver", "deliver": None}

        def act() -> None:
            r = self._request(step, "POST", f"{self.targets.order}/orders/{order_id}/{step}")
            if r is None:
                return
            if then is not None:
                self._later(self.mix.step_delay, self._step(order_id, then, following.get(then)))
            elif step == "deliver" and self.rng.random() < self.mix.refund:
                self._later(self.mix.step_delay, self._step(order_id, "refund", None))

        return act

    # -- running ----------------------------------------------------------------------------------------

    def seed_catalogue(self, stock: int = 1_000_000) -> dict[str, int]:
        """Make sure the products the visitors buy exist, with `stock` each; returns the service's answer
        (products created, updated, restocked, unchanged and the events that wrote it)."""
        r = self.http.post(
            f"{self.targets.product}/products/seed", params={"count": self.mix.products, "stock": stock}
        )
        r.raise_for_status()
        seeded: dict[str, int] = r.json()
        log.info("catalogue_seeded", **seeded)
        return seeded

    def run(self, rate: float, duration: float) -> LoadReport:
        """Send about `rate` requests per second for `duration` seconds; wait for in-flight ones."""
        if rate <= 0 or duration <= 0:
            raise ValueError("rate and duration must be positive")
        self.report = LoadReport(target_rate=rate)
        slots = threading.BoundedSemaphore(self.workers)

        def run_one(action: Action) -> None:
            try:
                action()
            except Exception as exc:  # a bug in the simulation must not stop the run
                log.warning("load_action_failed", error=repr(exc)[:300])
            finally:
                slots.release()

        started = time.monotonic()
        with ThreadPoolExecutor(max_workers=self.workers, thread_name_prefix="load") as pool:
            for tick in itertools.count():
                due = started + tick / rate
                if due >= started + duration:
                    break
                delay = due - time.monotonic()
                if delay > 0:
                    time.sleep(delay)
                if not slots.acquire(blocking=False):
                    self.report.behind += 1
                    continue
                pool.submit(run_one, self._next_action())
        self.report.duration = time.monotonic() - started
        return self.report

    def close(self) -> None:
        self.http.close()


def run_load(
    targets: Targets,
    rate: float,
    duration: float,
    *,
    seed: int | None = None,
    workers: int = 32,
    mix: Mix | None = None,
    seed_catalogue: bool = True,
) -> LoadReport:
    """Seed the catalogue (optional) and run the load; returns the report."""
    generator = LoadGenerator(targets, mix=mix, seed=seed, workers=workers)
    try:
        if seed_catalogue:
            generator.seed_catalogue()
        return generator.run(rate, duration)
    finally:
        generator.close()
