"""Schemathesis hooks for minicloud's API fuzz run (scripts/fuzz-api).

A watch (`watch=true`) streams until the client leaves; a fuzzer reads whole responses, so
every watch it starts is bounded with `timeoutSeconds`, as a real client would bound it. The
same goes for following an Instance's log.
"""

import schemathesis

# What the server reads as "true" for a flag (see `flag` in src/api/objects.rs).
TRUE = ("true", "1", "")


@schemathesis.hook
def before_call(context, case, kwargs):
    query = case.query
    if not query:
        return
    if "watch" in query and str(query["watch"]) in TRUE:
        query["timeoutSeconds"] = 1
    if "follow" in query and str(query["follow"]) in TRUE:
        query["follow"] = "false"
