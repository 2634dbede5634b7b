"""Images travel over the mesh (issue 17): real daemons, two real Docker engines.

The requester's engine is the machine's own; the worker's is a second, empty engine in a
network namespace of its own (``engines.py``), so it can reach no registry and sees none of the
first engine's images. Images are built here from ``p2pmesh/busybox:1`` with a unique tag, so
only the requester's engine holds them. One mesh, in order:

1. a job whose image the worker lacks: its pull fails at once (no registry), it gets the image
   from the requester (both layers), checks its ID, tags it with the offer's name, runs it;
2. the same image again: nothing is transferred (a cache hit, counted by ``status``);
3. another image on the same base: only its own layer travels;
4. an image whose layer another requester serves tampered (``P2PMESH_FAULT=tamper-image``):
   refused by digest, nothing loaded.

Plus, with the worker started ``--no-pull``: an offer that names no image ID (pinned by a digest
the requester does not hold) is declined, since neither a pull nor a transfer can get it.
"""

from __future__ import annotations

import json
import secrets
import subprocess
from pathlib import Path
from typing import Any

import pytest
from engines import second_engine
from jobmesh import (
    BUSYBOX,
    docker_client,
    docker_missing,
    job_doc,
    offer,
    request,
    wait_job,
    write_job,
)
from mesh import wait_until
from trustmesh import start_mesh

pytestmark = [pytest.mark.integration, pytest.mark.docker]

CMD = ["sh", "-c", "cat /marker > /out/marker; cat /in/data.txt > /out/data.txt"]
DATA = "the same input for every job\n"


def _job(folder: Path, name: str, image: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "data.txt").write_text(DATA)
    doc = job_doc(name=name, image=image, command=CMD, inputs={"data.txt": "data.txt"})
    return write_job(folder, doc=doc)


MARKS: dict[str, str] = {}


def _build(tag: str, line: str, folder: Path) -> str:
    """Build ``tag`` FROM busybox with one layer of its own on the main engine; its ID."""
    folder.mkdir(parents=True, exist_ok=True)
    MARKS[tag] = line
    (folder / "Dockerfile").write_text(f"FROM {BUSYBOX}\nRUN echo {line} > /marker\n")
    subprocess.run(
        ["docker", "build", "-q", "-t", tag, str(folder)], check=True, capture_output=True
    )
    out = subprocess.run(
        ["docker", "image", "inspect", tag, "--format", "{{.Id}}"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out.stdout.strip()


def _layers(tag: str) -> list[str]:
    out = subprocess.run(
        ["docker", "image", "inspect", tag, "--format", "{{json .RootFS.Layers}}"],
        check=True,
        capture_output=True,
        text=True,
    )
    return list(json.loads(out.stdout))


def _log_entries(text: str, msg: str) -> list[dict[str, Any]]:
    out = []
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if entry.get("msg") == msg:
            out.append(entry)
    return out


def _engine_ids(engine: Any) -> set[str]:
    return {img.id for img in engine.client().images.list()}


def _cache(node: Any) -> dict[str, Any]:
    return dict(request(node, "status")["node"]["cache"])


def test_an_image_only_the_requester_holds_travels_once_and_tampering_is_refused(
    tmp_path: Path,
) -> None:
    why = docker_missing((BUSYBOX,))
    if why:
        pytest.skip(why)
    tag = secrets.token_hex(4)
    first, second, bad = (f"p2pmesh/imgtest-{tag}-{n}:1" for n in ("a", "b", "bad"))
    ids = {
        t: _build(t, f"mark-{n}-{secrets.token_hex(4)}", tmp_path / f"build-{n}")
        for n, t in enumerate((first, second, bad))
    }
    main = docker_client()
    try:
        with second_engine() as engine:
            assert not _engine_ids(engine) & set(ids.values())
            mesh = start_mesh(
                tmp_path / "mesh",
                3,
                node_args={0: ["--no-work"], 2: ["--no-work"]},
                node_env={
                    1: engine.env,
                    2: {"P2PMESH_FAULT": "tamper-image", "P2PMESH_ALLOW_FAULTS": "1"},
                },
            )
            try:
                _run(mesh, engine, ids, first, second, bad, tmp_path)
            finally:
                mesh.close()
    finally:
        for t in (first, second, bad):
            subprocess.run(["docker", "rmi", "-f", t], capture_output=True, check=False)
        if main is not None:
            main.close()


def _offer_and_wait(
    mesh: Any, tmp_path: Path, name: str, image: str, requester: Any = None
) -> dict[str, Any]:
    requester = requester or mesh.nodes[0]
    job = _job(tmp_path / name, name, image)
    sub = request(requester, "submit", {"job_file": str(job), "bid_window_s": 1}, timeout=120)
    return wait_job(requester, sub["job_id"], timeout=180, mesh=mesh)


def _run(
    mesh: Any,
    engine: Any,
    ids: dict[str, str],
    first: str,
    second: str,
    bad: str,
    tmp_path: Path,
) -> None:
    requester, worker, _ = mesh.nodes

    # 1. The worker's engine lacks the image: fetched from the requester, checked, run. Offered
    # through the CLI, which names the image by its ID.
    out = tmp_path / "out-first"
    path = _job(tmp_path / "first", "first", first)
    res = offer(requester, path, "--wait", "--out", str(out), "--bid-window", "1", timeout=240)
    assert res.rc == 0 and res.state == "done", res.describe() + "\n" + mesh.log_tails(20)
    assert (out / "outputs" / "marker").read_text().strip() == MARKS[first]  # its bits ran
    assert (out / "outputs" / "data.txt").read_text() == DATA
    fetched = _log_entries(worker.log_text(), "image fetched from the mesh")
    assert len(fetched) == 1, worker.log_tail(30)
    assert fetched[0]["image_id"] == ids[first]
    assert fetched[0]["layers_fetched"] == 2 == fetched[0]["layers_total"]
    pulls = _log_entries(worker.log_text(), "image pull failed")
    assert pulls and pulls[0]["image"] == first  # the registry was tried first, and failed
    assert ids[first] in _engine_ids(engine)
    tags = engine.client().images.get(ids[first]).tags
    assert first in tags  # tagged with the offer's name
    cache1 = _cache(worker)
    assert cache1["by_kind"] == {"image": 1, "input": 1}, cache1
    assert cache1["misses"] == 2 and cache1["hits"] == 0, cache1  # the image and the input
    assert cache1["used_bytes"] > 0 and cache1["limit_bytes"] > cache1["used_bytes"]

    # 2. The same image and input again: no transfer at all, two counted hits.
    doc = _offer_and_wait(mesh, tmp_path, "again", first)
    assert doc["state"] == "done", doc
    assert len(_log_entries(worker.log_text(), "image fetched from the mesh")) == 1
    cache2 = _cache(worker)
    assert (cache2["hits"], cache2["misses"]) == (2, 2), (cache1, cache2)
    assert cache2["image_bytes_fetched"] == cache1["image_bytes_fetched"]

    # 3. Another image on the same base: only the layer the worker lacks travels.
    doc = _offer_and_wait(mesh, tmp_path, "second", second)
    assert doc["state"] == "done", doc
    fetched = _log_entries(worker.log_text(), "image fetched from the mesh")
    assert fetched[-1]["image_id"] == ids[second]
    assert fetched[-1]["layers_fetched"] == 1 and fetched[-1]["layers_total"] == 2
    for f in fetched:  # the figures, for whoever reads the test's output
        print(f"image {f['image']}: {f['bytes']} bytes in {f['seconds']} s")

    # 4. Tampered: another requester (FAULT tamper-image) serves its image with one byte of a
    # layer flipped; the worker refuses the layer by its digest and loads nothing.
    doc = _offer_and_wait(mesh, tmp_path, "bad", bad, requester=mesh.nodes[2])
    assert doc["state"] != "done", doc
    wait_until(
        lambda: any(
            "does not match its digest" in e.get("error", "")
            for e in _log_entries(worker.log_text(), "image not got")
        ),
        30.0,
        interval=0.5,
        message=lambda: worker.log_tail(30),
    )
    assert ids[bad] not in _engine_ids(engine)
    result = doc["workers"][0]["result"] if doc.get("workers") else None
    assert result is None or result["status"] == "error", doc


def test_a_worker_that_can_neither_pull_nor_fetch_declines(tmp_path: Path) -> None:
    why = docker_missing((BUSYBOX,))
    if why:
        pytest.skip(why)
    absent = "p2pmesh/absent-on-purpose@sha256:" + "0" * 64
    mesh = start_mesh(tmp_path / "mesh", 2, node_args={0: ["--no-work"], 1: ["--no-pull"]})
    try:
        requester, worker = mesh.nodes
        job = write_job(tmp_path / "absent", doc=job_doc(name="absent", image=absent))
        sub = request(requester, "submit", {"job_file": str(job), "bid_window_s": 1})

        def declined() -> list[dict[str, Any]]:
            return [
                d
                for d in _log_entries(worker.log_text(), "not bidding")
                if d.get("job") == sub["job_id"]
            ]

        wait_until(declined, 30.0, interval=0.5, message=lambda: worker.log_tail(10))
        assert declined()[0]["reason"] == (
            f"image not present: {absent} (the offer names no image ID to fetch it by, "
            "and this node does not pull)"
        )
        request(requester, "cancel", {"job_id": sub["job_id"]})
    finally:
        mesh.close()


def test_the_cache_evicts_least_recently_used_images_it_loaded_never_the_owners(
    tmp_path: Path,
) -> None:
    why = docker_missing((BUSYBOX,))
    if why:
        pytest.skip(why)
    tag = secrets.token_hex(4)
    older, newer = (f"p2pmesh/imgtest-{tag}-{n}:1" for n in ("old", "new"))
    ids = {
        t: _build(t, f"mark-{n}-{secrets.token_hex(4)}", tmp_path / f"build-{n}")
        for n, t in enumerate((older, newer))
    }
    try:
        with second_engine() as engine:
            # The worker's owner holds busybox: the cache must never remove it.
            save = subprocess.Popen(["docker", "save", BUSYBOX], stdout=subprocess.PIPE)
            subprocess.run(
                ["docker", "-H", engine.host, "load"],
                stdin=save.stdout,
                check=True,
                capture_output=True,
            )
            assert save.wait() == 0
            own = engine.client().images.get(BUSYBOX).id
            # About 3 MiB: room for one of the two ~2 MiB images, not for both.
            mesh = start_mesh(
                tmp_path / "mesh",
                2,
                node_args={0: ["--no-work"], 1: ["--cache-gb", "0.003"]},
                node_env={1: engine.env},
            )
            try:
                worker = mesh.nodes[1]
                for name, image in (("older", older), ("newer", newer)):
                    doc = _offer_and_wait(mesh, tmp_path, name, image)
                    assert doc["state"] == "done", doc
                fetched = _log_entries(worker.log_text(), "image fetched from the mesh")
                assert [f["layers_fetched"] for f in fetched] == [1, 1]  # the base was there
                wait_until(
                    lambda: ids[older] not in _engine_ids(engine),
                    30.0,
                    interval=0.5,
                    message=lambda: f"{_cache(worker)}\n{worker.log_tail(20)}",
                )
                held = _engine_ids(engine)
                assert ids[newer] in held and own in held, held
                cache = _cache(worker)
                assert cache["evicted"] >= 1 and cache["by_kind"].get("image") == 1, cache
                assert cache["used_bytes"] <= cache["limit_bytes"], cache
            finally:
                mesh.close()
    finally:
        for t in (older, newer):
            subprocess.run(["docker", "rmi", "-f", t], capture_output=True, check=False)


def test_a_peer_that_holds_the_image_serves_it_when_the_requester_cannot(
    tmp_path: Path,
) -> None:
    why = docker_missing((BUSYBOX,))
    if why:
        pytest.skip(why)
    tag = secrets.token_hex(4)
    name, alias = f"p2pmesh/imgtest-{tag}:1", f"p2pmesh/alias-{tag}:1"
    image_id = _build(name, f"mark-{tag}", tmp_path / "build")
    try:
        with second_engine() as engine1, second_engine() as engine2:
            # W1 runs only the image's own name, W2 only its alias: job 1 goes to W1, job 2
            # (the same bits under the alias) to W2.
            mesh = start_mesh(
                tmp_path / "mesh",
                3,
                node_args={0: ["--no-work"]},
                node_env={1: engine1.env, 2: engine2.env},
                allow={1: ["p2pmesh/imgtest-*"], 2: ["p2pmesh/alias-*"]},
            )
            try:
                requester, w1, w2 = mesh.nodes
                doc = _offer_and_wait(mesh, tmp_path, "one", name)
                assert doc["state"] == "done" and doc["workers"][0]["peer_id"] == w1.peer_id
                subprocess.run(["docker", "tag", name, alias], check=True, capture_output=True)
                job = _job(tmp_path / "two", "two", alias)
                # W2 is away while the job is offered and the requester loses the image: with
                # W2 the only peer that fits, its bid would be awarded at once, and it could
                # ask the requester before the image is gone. It comes back to the offer's
                # next publication.
                w2.stop()
                sub = request(
                    requester, "submit", {"job_file": str(job), "bid_window_s": 1}, timeout=120
                )
                # The requester can no longer serve it: gone from its engine and its blobs.
                subprocess.run(["docker", "rmi", "-f", image_id], check=True, capture_output=True)
                (requester.home / "blobs" / image_id[len("sha256:") :]).unlink()
                w2.start()
                doc = wait_job(requester, sub["job_id"], timeout=180, mesh=mesh)
                assert doc["state"] == "done", doc
                assert doc["workers"][0]["peer_id"] == w2.peer_id
                [got] = _log_entries(w2.log_text(), "image fetched from the mesh")
                assert got["source"] == w1.peer_id and got["image_id"] == image_id, got
                assert image_id in _engine_ids(engine2)
            finally:
                mesh.close()
    finally:
        for t in (name, alias):
            subprocess.run(["docker", "rmi", "-f", t], capture_output=True, check=False)
