"""Schemathesis hooks for deploy/fuzz.sh (loaded through SCHEMATHESIS_HOOKS=fuzz_hooks).

The API's own answer is what is checked: a sign-in redirect (302 to the issuer) is not followed,
since the page behind it belongs to the issuer, not to this API.
"""

import schemathesis


@schemathesis.hook
def process_call_kwargs(context, case, kwargs):
    kwargs["allow_redirects"] = False
