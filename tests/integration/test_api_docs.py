"""/docs works with no internet; /openapi.json describes bodies, parameters and statuses."""

from __future__ import annotations

import re

import httpx


async def test_docs_page_needs_no_cdn(client: httpx.AsyncClient) -> None:
    page = await client.get("/docs")
    assert page.status_code == 200
    assert not re.search(r"(src|href)=['\"]https?://", page.text), "assets must be local"
    js = re.search(r"src=['\"](/docs/static/[^'\"]+\.js)", page.text)
    assert js, page.text
    asset = await client.get(js.group(1))
    assert asset.status_code == 200 and len(asset.content) > 100_000  # the real bundle
    assert (await client.get("/docs/static/swagger-ui.css")).status_code == 200


async def test_openapi_describes_bodies_params_and_statuses(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    chat = spec["paths"]["/v1/chat/completions"]["post"]
    body = chat["requestBody"]["content"]["application/json"]["schema"]
    assert body["required"] == ["model", "messages"]
    assert {"200", "400", "401", "404", "413", "502"} <= set(chat["responses"])
    assert "text/event-stream" in chat["responses"]["200"]["content"]
    reqs = spec["paths"]["/v1/admin/requests"]["get"]
    params = {p["name"]: p["schema"] for p in reqs["parameters"]}
    assert params["limit"] == {"type": "integer", "minimum": 1, "maximum": 1000}
    assert params["status"] == {"enum": ["ok", "error"]}
    approvals = spec["paths"]["/v1/approvals"]["post"]
    assert "201" in approvals["responses"] and "200" not in approvals["responses"]
    assert approvals["requestBody"]["content"]["application/json"]["schema"][
        "additionalProperties"] is False
    for path, ops in spec["paths"].items():
        for method, op in ops.items():
            assert "422" not in op["responses"], (method, path)  # keel answers 400
            assert "405" in op["responses"]


async def test_405_names_every_allowed_method(client: httpx.AsyncClient) -> None:
    r = await client.put("/v1/approvals")
    assert r.status_code == 405
    assert r.headers["allow"] == "GET, POST"
    assert r.json()["error"]["code"] == "method_not_allowed"
    r = await client.delete("/v1/chat/completions")
    assert r.headers["allow"] == "POST"
