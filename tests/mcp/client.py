"""The MCP server driven by the official Python SDK (`mcp` on PyPI), as an agent's client would.

Run by `it::mcp::python_sdk_client` against a test system, which passes in the environment:
MCP_URL (the endpoint), SYSTEM_TOKEN and GUEST_TOKEN (a System user, and a guest of the organization),
ORGANIZATION_ID, ENVIRONMENT_ID, OTHER_ORGANIZATION_ID (one the guest is not in) and TEMPLATE_ID (a
template of the organization whose model streams through the fake provider).

It checks: the 401 discovery flow (challenge, then the protected resource metadata); initialize and
the tool list (every tool has input and output schemas, which the SDK then holds every structured
result to); each tool as each role, with the REST status of every refusal; another tenant; pagination;
a streamed execution's progress; resources and prompts. Exits non-zero on the first failure.
"""

import asyncio
import contextlib
import json
import os
import re

import httpx2
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared.exceptions import MCPError

URL = os.environ["MCP_URL"]
SYSTEM = os.environ["SYSTEM_TOKEN"]
GUEST = os.environ["GUEST_TOKEN"]
ORG = os.environ["ORGANIZATION_ID"]
ENV = os.environ["ENVIRONMENT_ID"]
OTHER_ORG = os.environ["OTHER_ORGANIZATION_ID"]
TEMPLATE = os.environ["TEMPLATE_ID"]


def check(condition, what):
    if not condition:
        raise AssertionError(what)


async def discovery():
    async with httpx2.AsyncClient() as http:
        refused = await http.post(
            URL,
            headers={"Accept": "application/json, text/event-stream"},
            json={"jsonrpc": "2.0", "id": 1, "method": "tools/list"},
        )
        check(refused.status_code == 401, f"no token: {refused.status_code}")
        challenge = refused.headers["www-authenticate"]
        found = re.search(r'resource_metadata="([^"]+)"', challenge)
        check(found, f"challenge without resource_metadata: {challenge}")
        metadata = (await http.get(found.group(1))).json()
        check(metadata["resource"] == URL, f"resource: {metadata}")
        check(len(metadata["authorization_servers"]) == 1, f"issuer: {metadata}")
        issuer = metadata["authorization_servers"][0]
        keys = await http.get(issuer + ".well-known/jwks.json")
        check(keys.status_code == 200 and keys.json()["keys"], "the issuer publishes its keys")


@contextlib.asynccontextmanager
async def session(token):
    """An initialized SDK session with a bearer token."""
    headers = {"Authorization": f"Bearer {token}"}
    async with httpx2.AsyncClient(headers=headers, timeout=30) as http:
        async with streamable_http_client(URL, http_client=http) as (read, write):
            async with ClientSession(read, write) as opened:
                result = await opened.initialize()
                check(result.protocol_version == "2025-11-25", f"version: {result.protocol_version}")
                check(result.server_info.name == "admin-platform", f"server: {result.server_info}")
                yield opened


def refusal(result):
    """The REST status a failed call carries, or None when it succeeded."""
    if not result.is_error:
        return None
    return json.loads(result.content[0].text)["status"]


async def each_tool_as_each_role(system, guest):
    tools = (await system.list_tools()).tools
    check(len(tools) > 30, f"tools: {len(tools)}")
    offered = [tool.name for tool in (await guest.list_tools()).tools]
    check("list_prompts" in offered and "list_feedback" not in offered, f"a guest's tools: {offered}")
    for tool in tools:
        check(tool.input_schema["type"] == "object", f"{tool.name} input schema")
        check(tool.output_schema and tool.output_schema["type"] == "object", f"{tool.name} output schema")

    prompt = await system.call_tool(
        "create_prompt", {"organizationId": ORG, "title": "From Python", "content": "Hi {{who}}"}
    )
    check(refusal(prompt) is None, f"create_prompt: {prompt}")
    prompt_id = prompt.structured_content["id"]
    models = (await system.call_tool("list_models", {"organizationId": ORG})).structured_content
    model_id = models["data"][0]["id"]
    member = (await guest.call_tool("list_organizations", {})).structured_content
    check([o["id"] for o in member["data"]] == [ORG], f"the guest's organizations: {member}")

    reads = {
        "list_organizations": {},
        "get_organization": {"id": ORG},
        "list_environments": {"organizationId": ORG},
        "get_environment": {"id": ENV},
        "list_variables": {"organizationId": ORG},
        "list_models": {"organizationId": ORG},
        "get_model": {"id": model_id},
        "list_visible_system_models": {},
        "list_workflows": {"organizationId": ORG},
        "list_workflow_entities": {"organizationId": ORG},
        "list_prompt_templates": {"organizationId": ORG},
        "get_prompt_template": {"id": TEMPLATE},
        "list_prompt_template_versions": {"id": TEMPLATE},
        "get_prompt_template_version": {"id": TEMPLATE, "version": 1},
        "list_prompt_template_executions": {"id": TEMPLATE},
        "list_prompts": {"organizationId": ORG},
        "get_prompt": {"id": prompt_id},
        # Running a template and analysing it take `entities:read`, as over REST.
        "analyze_prompt_template_sentiment": {"id": TEMPLATE},
    }
    writes = {
        "create_prompt_template": {
            "organizationId": ORG, "environmentId": ENV, "name": "From Python {role}", "promptText": "x",
        },
        "update_prompt": {"id": prompt_id, "title": "Renamed by {role}"},
    }
    # The audit trail is for admins; triage and notifications for System users.
    beyond_a_guest = {
        "list_audit_events": {"organizationId": ORG},
        "list_feedback": {},
        "list_feedback_groups": {},
        "list_notifications": {},
        "count_unread_notifications": {},
    }
    for role, session in (("system", system), ("guest", guest)):
        for name, arguments in reads.items():
            result = await session.call_tool(name, arguments)
            check(refusal(result) is None, f"{name} as {role}: {result.content}")
        for name, arguments in writes.items():
            arguments = {k: v.format(role=role) if isinstance(v, str) else v for k, v in arguments.items()}
            result = await session.call_tool(name, arguments)
            expected = None if role == "system" else 403
            check(refusal(result) == expected, f"{name} as {role}: {result.content}")
        for name, arguments in beyond_a_guest.items():
            result = await session.call_tool(name, arguments)
            expected = None if role == "system" else 403
            check(refusal(result) == expected, f"{name} as {role}: {result.content}")

    # Another tenant's templates are not the guest's to see.
    result = await guest.call_tool("list_prompt_templates", {"organizationId": OTHER_ORG})
    check(refusal(result) in (403, 404), f"another tenant: {result.content}")

    # Pagination, as the REST API pages.
    for n in range(3):
        await system.call_tool("create_prompt", {"organizationId": ORG, "title": f"Paged {n}", "content": "c"})
    page = (await system.call_tool("list_prompts", {"organizationId": ORG, "limit": 2, "page": 2})).structured_content
    check(page["pagination"] == {"page": 2, "limit": 2, "total": 4, "totalPages": 2}, f"page 2: {page}")
    check(len(page["data"]) == 2, f"page 2 rows: {page}")
    return prompt_id


async def streamed_execution(system):
    pieces = []

    async def progress(done, total, message):
        pieces.append(message)

    result = await system.call_tool(
        "execute_prompt_template",
        {"id": TEMPLATE, "variableSet": "default"},
        progress_callback=progress,
    )
    check(refusal(result) is None, f"execute: {result.content}")
    output = result.structured_content["output"]
    check(output.startswith("Echo: Tell me about Ann"), f"output: {output}")
    for _ in range(50):
        if "".join(pieces) == output:
            break
        await asyncio.sleep(0.1)
    check("".join(pieces) == output, f"progress {pieces} is not the output {output!r}")
    check(len(pieces) >= 5, f"one progress message per token: {pieces}")


async def resources_and_prompts(guest, prompt_id):
    resources = (await guest.list_resources()).resources
    uri = f"admin-platform://prompt-templates/{TEMPLATE}"
    check(uri in [str(r.uri) for r in resources], f"resources: {resources}")
    contents = (await guest.read_resource(uri)).contents[0]
    check(json.loads(contents.text)["id"] == TEMPLATE, f"read: {contents}")
    prompts = (await guest.list_prompts()).prompts
    listed = next(p for p in prompts if p.name == prompt_id)
    check([a.name for a in listed.arguments] == ["who"], f"arguments: {listed}")
    got = await guest.get_prompt(prompt_id, {"who": "Ann"})
    check(got.messages[0].content.text == "Hi Ann", f"rendered: {got}")
    try:
        await guest.read_resource(f"admin-platform://prompt-templates/{OTHER_ORG}")
        check(False, "reading a template that is not there")
    except MCPError as error:
        check(error.error.code == -32002, f"not found: {error.error}")


async def main():
    await discovery()
    async with session(SYSTEM) as system, session(GUEST) as guest:
        prompt_id = await each_tool_as_each_role(system, guest)
        await streamed_execution(system)
        await resources_and_prompts(guest, prompt_id)
    print("ok")


if __name__ == "__main__":
    # A failed check raises AssertionError (inside the SDK's task groups, as an exception group):
    # Python prints it and exits with status 1.
    asyncio.run(main())
