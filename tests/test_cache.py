"""Cache-aside for workflow reads: hits skip the database, writes are read back at once (also
against the classic fill-after-invalidate race), and a Redis outage only costs speed."""

from __future__ import annotations

import asyncio
import logging
import random

import httpx
import pytest

from models import workflows as store
from models.cache import Cache, MemoryBackend, RedisBackend, current_cache, set_cache
from models.inputs import WorkflowUpdate
from tests.conftest import QueryCounter


async def create(client: httpx.AsyncClient, name: str) -> int:
    response = await client.post(
        "/workflows/", json={"name": name, "tasks": [{"name": "t", "order": 1}]}
    )
    workflow_id: int = response.json()["id"]
    return workflow_id


async def test_a_cached_read_sends_no_sql(
    client: httpx.AsyncClient, sql_queries: QueryCounter
) -> None:
    workflow_id = await create(client, "cached")
    await current_cache().invalidate(store.workflow_group(workflow_id))  # create filled it
    sql_queries.reset()
    first = await client.get(f"/workflows/{workflow_id}")
    assert len(sql_queries.statements) == 2  # the workflow, then its tasks
    sql_queries.reset()
    second = await client.get(f"/workflows/{workflow_id}")
    graphql = await client.post(
        "/graphql", json={"query": f'{{ workflow(id: "{workflow_id}") {{ name tasks {{ id }} }} }}'}
    )
    assert sql_queries.statements == []
    assert second.content == first.content
    assert graphql.json()["data"]["workflow"]["name"] == "cached"


async def test_list_pages_are_cached_and_invalidated(
    client: httpx.AsyncClient, sql_queries: QueryCounter
) -> None:
    await client.get("/workflows/", params={"limit": 1000})
    sql_queries.reset()
    before = (await client.get("/workflows/", params={"limit": 1000})).json()
    assert sql_queries.statements == []
    workflow_id = await create(client, "listed")
    after = (await client.get("/workflows/", params={"limit": 1000})).json()
    assert len(after) == len(before) + 1
    assert after[-1]["id"] == workflow_id


async def test_the_classic_cache_aside_race_cannot_serve_old_data(
    client: httpx.AsyncClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A reader misses and loads the old row; a write commits and returns; the reader then
    fills the cache with what it loaded. Every read after the write must still see the write."""
    workflow_id = await create(client, "old")
    await current_cache().invalidate(store.workflow_group(workflow_id))  # create filled it
    loaded, release = asyncio.Event(), asyncio.Event()
    real_load = store._load_workflow_json

    async def slow_load(identifier: int) -> bytes:
        body = await real_load(identifier)
        loaded.set()
        await release.wait()  # the write happens here, between load and fill
        return body

    monkeypatch.setattr(store, "_load_workflow_json", slow_load)
    slow_reader = asyncio.create_task(store.get_workflow(workflow_id))
    await asyncio.wait_for(loaded.wait(), 5)
    monkeypatch.setattr(store, "_load_workflow_json", real_load)

    await store.update_workflow(workflow_id, WorkflowUpdate(name="new"))
    release.set()
    assert (await slow_reader)["name"] == "old"  # it began before the write: fine
    assert (await store.get_workflow(workflow_id))["name"] == "new"
    response = await client.get(f"/workflows/{workflow_id}")
    assert response.json()["name"] == "new"


async def test_read_your_writes_under_concurrency(client: httpx.AsyncClient) -> None:
    """Writers bump a counter in each workflow's name; readers run alongside. A read that
    starts after a write returned must never see an older value: zero stale reads."""
    workflows = [await create(client, "v0") for _ in range(4)]
    committed = dict.fromkeys(workflows, 0)
    writes_per_workflow = 15
    stale: list[tuple[int, int, int]] = []
    reads = 0
    cache = current_cache()
    hits_before = cache.hits

    async def writer(workflow_id: int) -> None:
        for version in range(1, writes_per_workflow + 1):
            response = await client.put(f"/workflows/{workflow_id}", json={"name": f"v{version}"})
            assert response.status_code == 200
            committed[workflow_id] = version

    async def reader(seed: int) -> None:
        nonlocal reads
        chooser = random.Random(seed)
        while not done.is_set():
            workflow_id = chooser.choice(workflows)
            floor = committed[workflow_id]
            if chooser.random() < 0.5:
                body = (await client.get(f"/workflows/{workflow_id}")).json()
                seen = int(body["name"][1:])
            else:
                query = f'{{ workflow(id: "{workflow_id}") {{ name }} }}'
                result = (await client.post("/graphql", json={"query": query})).json()
                seen = int(result["data"]["workflow"]["name"][1:])
            reads += 1
            if seen < floor:
                stale.append((workflow_id, floor, seen))
            # A cache hit through the in-process transport may never suspend: let the writers
            # run (over a real socket every request would).
            await asyncio.sleep(0)

    done = asyncio.Event()
    readers = [asyncio.create_task(reader(seed)) for seed in range(8)]
    await asyncio.gather(*(writer(workflow_id) for workflow_id in workflows))
    done.set()
    await asyncio.gather(*readers)
    assert stale == []
    assert reads > 200
    assert cache.hits > hits_before  # the cache was really in the path


class FlakyBackend(MemoryBackend):
    """An in-process backend whose invalidations fail a given number of times."""

    def __init__(self, failures: int) -> None:
        super().__init__(ttl_seconds=60)
        self.failures = failures

    async def bump(self, groups: tuple[str, ...]) -> None:
        if self.failures > 0:
            self.failures -= 1
            raise ConnectionError("redis went away")
        await super().bump(groups)


async def test_a_failed_invalidation_bypasses_the_cache_until_retried() -> None:
    cache = Cache(FlakyBackend(failures=3))
    value = b"v1"

    async def load() -> bytes:
        return value

    assert await cache.read("g", "", load) == b"v1"
    value = b"v2"
    await cache.invalidate("g")  # fails: retried in the background
    assert await cache.read("g", "", load) == b"v2"  # not the cached v1
    for _ in range(200):
        if not cache._unconfirmed:
            break
        await asyncio.sleep(0.05)
    assert not cache._unconfirmed
    value = b"v3"
    assert await cache.read("g", "", load) == b"v3"  # a miss, which fills the cache again
    value = b"v4"
    assert await cache.read("g", "", load) == b"v3"  # cached once the retry went through
    await cache.close()


async def test_reads_fall_back_to_the_database_when_redis_is_down(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    workflow_id = await create(client, "survivor")
    working = current_cache()
    # Nothing listens on port 1: every Redis call fails at once.
    dead = Cache(RedisBackend("redis://127.0.0.1:1/0", "dead:", ttl_seconds=60))
    set_cache(dead)
    try:
        with caplog.at_level(logging.WARNING, logger="models.cache"):
            response = await client.get(f"/workflows/{workflow_id}")
            assert response.status_code == 200
            assert response.json()["name"] == "survivor"
            updated = await client.put(f"/workflows/{workflow_id}", json={"name": "still"})
            assert updated.status_code == 200
            assert (await client.get(f"/workflows/{workflow_id}")).json()["name"] == "still"
            for _ in range(20):
                assert (await client.get(f"/workflows/{workflow_id}")).status_code == 200
            health = await client.get("/healthz")
        # This app runs tasks without Redis (asyncio executor): the cache alone is down.
        assert health.status_code == 200
        assert (health.json()["status"], health.json()["cache"]) == ("degraded", "unavailable")
        # Two dozen failed reads, one warning.
        warnings = [r.getMessage() for r in caplog.records if r.name == "models.cache"]
        assert len(warnings) == 1, warnings
        assert "Redis (cache) unreachable" in warnings[0]
        assert "reads go to the database" in warnings[0]
    finally:
        set_cache(working)
        await dead.close()
    # The invalidation this process could not deliver must not leave the real cache stale.
    await working.invalidate(store.workflow_group(workflow_id), store.LIST_GROUP)
    assert (await client.get(f"/workflows/{workflow_id}")).json()["name"] == "still"


async def test_reads_of_absent_ids_do_not_hide_later_creates(client: httpx.AsyncClient) -> None:
    # The next id is not known in advance; read a range of ids past the newest one.
    newest = await create(client, "probe")
    for candidate in range(newest + 1, newest + 4):
        assert (await client.get(f"/workflows/{candidate}")).status_code == 404
    created = await create(client, "appears")
    assert newest < created <= newest + 3
    assert (await client.get(f"/workflows/{created}")).json()["name"] == "appears"
