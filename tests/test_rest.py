"""The REST routes of contract section 2, kept byte-for-byte from the service we replace."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from models.tables import Execution, Task

WORKFLOW_KEYS = ["name", "description", "id", "created_at", "updated_at", "tasks"]
TASK_KEYS = [
    "name",
    "description",
    "order",
    "execution_type",
    "parameters",
    "action",
    "max_attempts",
    "timeout_seconds",
    "id",
    "workflow_id",
]


async def create(client: httpx.AsyncClient, **body: Any) -> dict[str, Any]:
    body.setdefault("name", "wf")
    response = await client.post("/workflows/", json=body)
    assert response.status_code == 200, response.text
    result: dict[str, Any] = response.json()
    return result


async def test_create_returns_the_workflow_in_the_original_shape(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post("/workflows/", json={"name": "deploy", "description": "ship"})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert list(body) == WORKFLOW_KEYS
    assert body["name"] == "deploy"
    assert body["description"] == "ship"
    assert body["tasks"] == []
    assert body["created_at"].endswith("Z")
    # Compact JSON, as FastAPI's JSONResponse renders it.
    assert response.content.startswith(b'{"name":"deploy","description":"ship","id":')


async def test_create_with_tasks_orders_them_and_keeps_parameters(
    client: httpx.AsyncClient,
) -> None:
    body = await create(
        client,
        name="etl",
        tasks=[
            {"name": "load", "order": 3, "parameters": {"z": 1, "a": [1, {"k": "v"}]}},
            {"name": "extract", "order": 1, "execution_type": "async", "max_attempts": 3},
            {"name": "transform", "order": 2, "timeout_seconds": 1.5, "action": "http"},
        ],
    )
    assert [task["name"] for task in body["tasks"]] == ["extract", "transform", "load"]
    first = body["tasks"][0]
    assert list(first) == TASK_KEYS
    assert first["execution_type"] == "async"
    assert first["max_attempts"] == 3
    assert first["parameters"] == {}
    assert first["action"] == "noop"
    assert first["workflow_id"] == body["id"]
    # Keys come back in the order they were sent (jsonb would sort them).
    load = (await client.get(f"/workflows/{body['id']}")).text
    assert '"parameters":{"z":1,"a":[1,{"k":"v"}]}' in load
    assert body["tasks"][1]["timeout_seconds"] == 1.5


async def test_get_and_404(client: httpx.AsyncClient) -> None:
    created = await create(client, name="one")
    response = await client.get(f"/workflows/{created['id']}")
    assert response.status_code == 200
    assert response.json() == created
    assert response.headers["content-type"] == "application/json"
    assert int(response.headers["content-length"]) == len(response.content)
    missing = await client.get("/workflows/2147483000")
    assert missing.status_code == 404
    assert missing.content == b'{"detail":"Workflow not found"}'


@pytest.mark.parametrize("bad_id", ["0", "-1", "2147483648", "99999999999999999999999"])
async def test_ids_that_cannot_exist_are_404_not_500(
    client: httpx.AsyncClient, bad_id: str
) -> None:
    for method, path in [
        ("GET", f"/workflows/{bad_id}"),
        ("DELETE", f"/workflows/{bad_id}"),
        ("DELETE", f"/workflows/{bad_id}/tasks/1"),
    ]:
        response = await client.request(method, path)
        assert response.status_code == 404, (method, path, response.text)


async def test_non_integer_id_is_422(client: httpx.AsyncClient) -> None:
    response = await client.get("/workflows/abc")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["path", "workflow_id"]


async def test_list_is_ordered_by_id_and_paged(client: httpx.AsyncClient) -> None:
    ids = [(await create(client, name=f"page-{n}"))["id"] for n in range(3)]
    everything = (await client.get("/workflows/", params={"limit": 1000})).json()
    listed = [row["id"] for row in everything]
    assert listed == sorted(listed)
    assert set(ids) <= set(listed)
    start = listed.index(ids[0])
    page = (await client.get("/workflows", params={"skip": start, "limit": 2})).json()
    assert [row["id"] for row in page] == ids[:2]
    assert (await client.get("/workflows/", params={"limit": 0})).json() == []
    default = (await client.get("/workflows/")).json()
    assert len(default) == min(100, len(listed))


@pytest.mark.parametrize("params", [{"skip": -1}, {"limit": -1}, {"limit": 1001}, {"skip": "x"}])
async def test_list_rejects_bad_paging(client: httpx.AsyncClient, params: dict[str, Any]) -> None:
    response = await client.get("/workflows/", params=params)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"][0] == "query"


async def test_update_workflow(client: httpx.AsyncClient) -> None:
    created = await create(client, name="before", tasks=[{"name": "t", "order": 1}])
    response = await client.put(
        f"/workflows/{created['id']}", json={"name": "after", "description": "new"}
    )
    assert response.status_code == 200
    body = response.json()
    assert (body["name"], body["description"]) == ("after", "new")
    assert body["tasks"] == created["tasks"]
    assert body["updated_at"] >= created["updated_at"]
    assert (await client.get(f"/workflows/{created['id']}")).json() == body
    missing = await client.put("/workflows/2147483000", json={"name": "x"})
    assert missing.status_code == 404
    assert missing.json() == {"detail": "Workflow not found"}


async def test_delete_workflow_takes_tasks_and_executions_with_it(
    client: httpx.AsyncClient,
) -> None:
    created = await create(client, name="doomed", tasks=[{"name": "t", "order": 1}])
    workflow_id = created["id"]
    await Execution.create(workflow_id=workflow_id, status="completed")
    response = await client.delete(f"/workflows/{workflow_id}")
    assert response.status_code == 200
    assert response.content == b'{"success":true}'
    assert (await client.get(f"/workflows/{workflow_id}")).status_code == 404
    assert await Task.filter(workflow_id=workflow_id).count() == 0
    assert await Execution.filter(workflow_id=workflow_id).count() == 0
    again = await client.delete(f"/workflows/{workflow_id}")
    assert again.status_code == 404
    assert again.json() == {"detail": "Workflow not found"}


async def test_add_update_delete_task(client: httpx.AsyncClient) -> None:
    workflow = await create(client, name="tasks")
    url = f"/workflows/{workflow['id']}/tasks/"
    added = await client.post(url, json={"name": "a", "order": 2, "parameters": {"x": 1}})
    assert added.status_code == 200
    task = added.json()
    assert list(task) == TASK_KEYS
    assert task["workflow_id"] == workflow["id"]

    update = {"name": "a2", "order": 0, "execution_type": "async", "max_attempts": 2}
    updated = await client.put(f"{url}{task['id']}", json=update)
    assert updated.status_code == 200
    assert updated.json()["name"] == "a2"
    assert updated.json()["parameters"] == {}  # a PUT replaces the whole task
    shown = (await client.get(f"/workflows/{workflow['id']}")).json()
    assert shown["tasks"] == [updated.json()]

    deleted = await client.delete(f"{url}{task['id']}")
    assert deleted.status_code == 200
    assert deleted.json() == {"success": True}
    assert (await client.get(f"/workflows/{workflow['id']}")).json()["tasks"] == []


async def test_task_routes_404(client: httpx.AsyncClient) -> None:
    first = await create(client, name="first", tasks=[{"name": "t", "order": 1}])
    other = await create(client, name="other")
    task_id = first["tasks"][0]["id"]
    not_in_workflow = {"detail": "Task not found in this workflow"}

    response = await client.post("/workflows/2147483000/tasks/", json={"name": "t", "order": 1})
    assert response.status_code == 404
    assert response.json() == {"detail": "Workflow not found"}

    response = await client.put(
        f"/workflows/{other['id']}/tasks/{task_id}", json={"name": "t", "order": 1}
    )
    assert (response.status_code, response.json()) == (404, not_in_workflow)
    response = await client.delete(f"/workflows/{other['id']}/tasks/{task_id}")
    assert (response.status_code, response.json()) == (404, not_in_workflow)
    response = await client.delete(f"/workflows/{first['id']}/tasks/2147483000")
    assert (response.status_code, response.json()) == (404, not_in_workflow)
    # The task is untouched by the failed calls.
    assert (await client.get(f"/workflows/{first['id']}")).json()["tasks"] == first["tasks"]


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/workflows"),
        ("GET", "/workflows/"),
        ("GET", "/workflows/{id}"),
        ("GET", "/workflows/{id}/"),
        ("PUT", "/workflows/{id}/"),
        ("POST", "/workflows/{id}/tasks"),
        ("POST", "/workflows/{id}/tasks/"),
        ("PUT", "/workflows/{id}/tasks/{task}/"),
        ("DELETE", "/workflows/{id}/tasks/{task}/"),
        ("DELETE", "/workflows/{id}/"),
    ],
)
async def test_routes_answer_with_and_without_trailing_slash(
    client: httpx.AsyncClient, method: str, path: str
) -> None:
    workflow = await create(client, name="slash", tasks=[{"name": "t", "order": 1}])
    url = path.format(id=workflow["id"], task=workflow["tasks"][0]["id"])
    body = {"name": "n", "order": 1} if method in ("PUT", "POST") else None
    response = await client.request(method, url, json=body)
    assert response.status_code == 200, response.text


async def test_create_without_trailing_slash(client: httpx.AsyncClient) -> None:
    response = await client.post("/workflows", json={"name": "no-slash"})
    assert response.status_code == 200
    assert response.json()["name"] == "no-slash"


async def test_openapi_describes_the_routes(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert set(spec["paths"]) >= {
        "/workflows/",
        "/workflows/{workflow_id}",
        "/workflows/{workflow_id}/tasks/",
        "/workflows/{workflow_id}/tasks/{task_id}",
    }
    schemas = spec["components"]["schemas"]
    assert "TaskCreate" in schemas
    assert "WorkflowOut" in schemas


async def test_health(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok"
