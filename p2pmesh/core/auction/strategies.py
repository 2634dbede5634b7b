"""Should this worker bid? A chain of small pure checks, each giving a reason (PROTOCOL.md §7.2).

The first check that says no decides, and its reason is logged and shown by ``p2pmesh status``
so that an operator sees why the node stays idle ("image not allowed: …").
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from p2pmesh.core import capability as cap
from p2pmesh.core.auction import sortition
from p2pmesh.core.auction.messages import Offer
from p2pmesh.core.capability import Capabilities, misfit


@dataclass(frozen=True, slots=True)
class BidContext:
    self_id: str
    caps: Capabilities
    active_jobs: int
    allow_network: bool
    now: int
    requester_allowed: bool = True  # the ledger issue plugs the credit limit in here
    local_images: frozenset[str] | None = None  # None: not known, every image counts as held
    # Why this node cannot forward a service's port ("": it can), e.g. not root (core/service.py)
    service_refusal: str = ""
    can_pull: bool = False  # may this worker pull a missing image from its registry?
    can_fetch_images: bool = False  # may it fetch a missing image from the mesh, by its ID?


@dataclass(frozen=True, slots=True)
class BidDecision:
    bid: bool
    reason: str
    kind: str = ""  # for a "no": a stable label, counted by reason in ``p2pmesh status``


Check = Callable[[Offer, BidContext], str | None]


# -- does a node with these capabilities fit this job? ------------------------------------------
# The rules live in ``capability`` (``misfit``), shared with the requester's count of peers
# that could bid; the bid chain below runs them one by one, in its own order.
def job_fits(caps: Capabilities, spec: Any, *, network_allowed: bool | None) -> str | None:
    """Does a node with ``caps`` fit job ``spec``? None if so, else the first reason why not."""
    why = misfit(spec, caps, network_allowed=network_allowed)
    return None if why is None else why.reason


def _rule(rule: Any, o: Offer, c: BidContext) -> str | None:
    why = rule(c.caps, o.job.spec, c.allow_network)
    return None if why is None else why.reason


# -- the bid chain -----------------------------------------------------------------------------
def _work_enabled(o: Offer, c: BidContext) -> str | None:
    return _rule(cap.fit_work, o, c)


def _not_own(o: Offer, c: BidContext) -> str | None:
    return "own job" if o.requester == c.self_id else None


def _not_excluded(o: Offer, c: BidContext) -> str | None:
    return "excluded by the requester" if c.self_id in o.exclude else None


def _selected(o: Offer, c: BidContext) -> str | None:
    if sortition.selected(o.job_id, c.self_id, o.select):
        return None
    return "not selected to bid on this job (bidder sortition)"


def _still_open(o: Offer, c: BidContext) -> str | None:
    return "offer past its deadline" if o.deadline_at <= c.now else None


def _executor(o: Offer, c: BidContext) -> str | None:
    return _rule(cap.fit_executor, o, c)


def _image_allowed(o: Offer, c: BidContext) -> str | None:
    return _rule(cap.fit_image, o, c)


def image_reference(image: str) -> str:
    """The reference an engine lists for ``image``: a name without tag or digest means
    ``:latest`` (the tag, if any, follows the last ``/``)."""
    if "@" in image or ":" in image.rsplit("/", 1)[-1]:
        return image
    return f"{image}:latest"


def image_held(spec: Any, local_images: frozenset[str] | None) -> bool:
    """Does the engine hold the job's image? By its ID when the job names one (the same
    name may mean other bits here), else by name."""
    if local_images is None:
        return True
    if spec.image_id:
        return spec.image_id in local_images
    return image_reference(spec.image) in local_images


def _image_present(o: Offer, c: BidContext) -> str | None:
    # Bidding for an image we lack and cannot get wins work we can only fail, and the job is
    # then tried on worker after worker. Whether a pull or a transfer will work is only known
    # by trying; a "no" here is for when neither may even be tried.
    spec = o.job.spec
    if image_held(spec, c.local_images):
        return None
    if c.can_fetch_images and spec.image_id:
        return None
    if c.can_pull:
        return None
    if not c.can_fetch_images:
        why = "this node neither pulls images nor fetches them from peers"
    else:
        why = "the offer names no image ID to fetch it by, and this node does not pull"
    return f"image not present: {spec.image} ({why})"


def _service(o: Offer, c: BidContext) -> str | None:
    # Local, like 6a: a worker that cannot enter a container's network namespace would win a
    # session that nobody can reach.
    if o.job.spec.service is None or not c.service_refusal:
        return None
    return f"cannot run service jobs here: {c.service_refusal}"


def _network(o: Offer, c: BidContext) -> str | None:
    return _rule(cap.fit_network, o, c)


def _resources(o: Offer, c: BidContext) -> str | None:
    return _rule(cap.fit_resources, o, c)


def _capacity(o: Offer, c: BidContext) -> str | None:
    if c.active_jobs >= c.caps.max_jobs:
        return f"busy ({c.active_jobs}/{c.caps.max_jobs} jobs)"
    return None


def _price(o: Offer, c: BidContext) -> str | None:
    return _rule(cap.fit_price, o, c)


def _requester(o: Offer, c: BidContext) -> str | None:
    return None if c.requester_allowed else "requester excluded or past its credit limit"


CHAIN: tuple[Check, ...] = (
    _work_enabled,
    _not_own,
    _not_excluded,
    _selected,
    _still_open,
    _executor,
    _image_allowed,
    _image_present,
    _service,
    _network,
    _resources,
    _capacity,
    _price,
    _requester,
)


# The label each check's "no" is counted under (resources say which one, from ``misfit``).
DECLINE_KINDS = {
    _work_enabled: "work disabled",
    _not_own: "own job",
    _not_excluded: "excluded by the requester",
    _selected: "not selected",
    _still_open: "offer past its deadline",
    _executor: "no executor",
    _image_allowed: "image not allowed",
    _image_present: "image not present",
    _service: "cannot forward services",
    _network: "network not allowed",
    _capacity: "busy",
    _price: "price above max_price",
    _requester: "requester past its credit limit",
}
RESOURCE_KINDS = {
    "cpus": "too few CPUs",
    "ram": "too little RAM",
    "disk": "too little disk",
    "gpu": "too few GPUs",
    "gpu_memory": "too little GPU memory",
}


def decide_bid(offer: Offer, ctx: BidContext) -> BidDecision:
    for check in CHAIN:
        reason = check(offer, ctx)
        if reason is not None:
            kind = DECLINE_KINDS.get(check, "")
            if check is _resources:
                why = cap.fit_resources(ctx.caps, offer.job.spec, ctx.allow_network)
                kind = RESOURCE_KINDS.get(why.kind, why.kind) if why else "resources"
            return BidDecision(False, reason, kind)
    return BidDecision(True, f"fits; bidding {ctx.caps.price}")


def eta_s(active_jobs: int) -> int:
    """A coarse estimate: a couple of seconds to start, plus queueing behind running jobs."""
    return 2 + 5 * active_jobs
