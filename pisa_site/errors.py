"""The domain's two kinds of refusal, in its own words; the API answers them with one shape (pisa_site/api.py).

A service or selector raises `BadInput` for something the caller asked that cannot be (a malformed country list, a
page past the last) and `NotFound` for something that is not there (a source, a variable). Neither knows HTTP: the
API's exception handler turns the first into a 400 and the second into a 404, `{"error": message}`.
"""


class BadInput(ValueError):
    pass


class NotFound(LookupError):
    pass
