-- The interface a request came through when it was not the REST API (the event metadata's `channel`,
-- `mcp` for the MCP server), shown in the audit trail. Rows projected before it have none, as their
-- events have none.
ALTER TABLE read_models.audit_index ADD COLUMN channel text;
