"""Should this worker bid? A chain of small pure checks, each giving a reason (PROTOCOL.md §7.2).

The first check that says no decides, and its reason is logged and shown by ``p2pmesh status``
so that an operator sees why the node stays idle ("image not allowed: …").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from typing import Any

from p2pmesh.core.auction.messages import Offer
from p2pmesh.core.capability import Capabilities


@dataclass(frozen=True, slots=True)
class BidContext:
    self_id: str
    caps: Capabilities
    active_jobs: int
    allow_network: bool
    now: int
    requester_allowed: bool = True  # the ledger issue plugs the credit limit in here
    local_images: frozenset[str] | None = None  # None: not known, every image counts as held


@dataclass(frozen=True, slots=True)
class BidDecision:
    bid: bool
    reason: str


Check = Callable[[Offer, BidContext], str | None]


# -- does a node with these capabilities fit this job? (caps, job spec, network allowed) -------
# The same tests serve the bid policy (on our own capabilities) and the requester's count of
# peers that could bid (on their records, where ``network_allowed`` is None: a record does not
# say, so it is not held against the peer).
def fit_work(caps: Capabilities, spec: Any, net: bool | None) -> str | None:
    return None if caps.work else "work is disabled on this node"


def fit_executor(caps: Capabilities, spec: Any, net: bool | None) -> str | None:
    return None if "docker" in caps.executors else "no working executor (Docker)"


def fit_image(caps: Capabilities, spec: Any, net: bool | None) -> str | None:
    image = spec.image
    if any(fnmatchcase(image, pattern) for pattern in caps.allow_images):
        return None
    if not caps.allow_images:
        return f"image not allowed: {image} (no --allow-image given)"
    return f"image not allowed: {image}"


def fit_network(caps: Capabilities, spec: Any, net: bool | None) -> str | None:
    if spec.network != "none" and net is False:
        return "job asks for network access, not allowed here"
    return None


def fit_resources(caps: Capabilities, spec: Any, net: bool | None) -> str | None:
    r = spec.resources
    if r.millicpus > caps.cpus * 1000:
        return f"needs {r.millicpus / 1000:g} CPUs, have {caps.cpus}"
    if r.ram_mib > caps.ram_mb:
        return f"needs {r.ram_mib} MiB RAM, have {caps.ram_mb}"
    if r.disk_mib > caps.disk_free_mb:
        return f"needs {r.disk_mib} MiB disk, have {caps.disk_free_mb} free"
    if r.gpus > len(caps.gpus):
        return f"needs {r.gpus} GPUs, have {len(caps.gpus)}"
    if r.gpus and sum(1 for g in caps.gpus if g.memory_mb >= r.gpu_memory_mib) < r.gpus:
        return f"needs {r.gpus} GPUs with {r.gpu_memory_mib} MiB each"
    return None


def fit_price(caps: Capabilities, spec: Any, net: bool | None) -> str | None:
    if caps.price > spec.max_price:
        return f"price {caps.price} above max_price {spec.max_price}"
    return None


FIT = (fit_work, fit_executor, fit_image, fit_network, fit_resources, fit_price)


def job_fits(caps: Capabilities, spec: Any, *, network_allowed: bool | None) -> str | None:
    """Does a node with ``caps`` fit job ``spec``? None if so, else the first reason why not."""
    for check in FIT:
        reason = check(caps, spec, network_allowed)
        if reason is not None:
            return reason
    return None


# -- the bid chain -----------------------------------------------------------------------------
def _work_enabled(o: Offer, c: BidContext) -> str | None:
    return fit_work(c.caps, o.job.spec, c.allow_network)


def _not_own(o: Offer, c: BidContext) -> str | None:
    return "own job" if o.requester == c.self_id else None


def _not_excluded(o: Offer, c: BidContext) -> str | None:
    return "excluded by the requester" if c.self_id in o.exclude else None


def _still_open(o: Offer, c: BidContext) -> str | None:
    return "offer past its deadline" if o.deadline_at <= c.now else None


def _executor(o: Offer, c: BidContext) -> str | None:
    return fit_executor(c.caps, o.job.spec, c.allow_network)


def _image_allowed(o: Offer, c: BidContext) -> str | None:
    return fit_image(c.caps, o.job.spec, c.allow_network)


def image_reference(image: str) -> str:
    """The reference an engine lists for ``image``: a name without tag or digest means
    ``:latest`` (the tag, if any, follows the last ``/``)."""
    if "@" in image or ":" in image.rsplit("/", 1)[-1]:
        return image
    return f"{image}:latest"


def _image_present(o: Offer, c: BidContext) -> str | None:
    # A worker never pulls (today): bidding for an image it lacks wins work it can only fail,
    # and the job is then tried on worker after worker.
    if c.local_images is None or image_reference(o.job.spec.image) in c.local_images:
        return None
    return f"image not present: {o.job.spec.image} (this node does not pull images)"


def _network(o: Offer, c: BidContext) -> str | None:
    return fit_network(c.caps, o.job.spec, c.allow_network)


def _resources(o: Offer, c: BidContext) -> str | None:
    return fit_resources(c.caps, o.job.spec, c.allow_network)


def _capacity(o: Offer, c: BidContext) -> str | None:
    if c.active_jobs >= c.caps.max_jobs:
        return f"busy ({c.active_jobs}/{c.caps.max_jobs} jobs)"
    return None


def _price(o: Offer, c: BidContext) -> str | None:
    return fit_price(c.caps, o.job.spec, c.allow_network)


def _requester(o: Offer, c: BidContext) -> str | None:
    return None if c.requester_allowed else "requester excluded or past its credit limit"


CHAIN: tuple[Check, ...] = (
    _work_enabled,
    _not_own,
    _not_excluded,
    _still_open,
    _executor,
    _image_allowed,
    _image_present,
    _network,
    _resources,
    _capacity,
    _price,
    _requester,
)


def decide_bid(offer: Offer, ctx: BidContext) -> BidDecision:
    for check in CHAIN:
        reason = check(offer, ctx)
        if reason is not None:
            return BidDecision(False, reason)
    return BidDecision(True, f"fits; bidding {ctx.caps.price}")


def eta_s(active_jobs: int) -> int:
    """A coarse estimate: a couple of seconds to start, plus queueing behind running jobs."""
    return 2 + 5 * active_jobs
