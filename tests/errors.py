"""The one-line refusal that every check of user input gives, as the tests read it."""

import pytest


def one_line_error(fn, *args, **kwargs) -> str:
    """The message of the ValueError that ``fn(*args, **kwargs)`` raises, asserted one line."""
    with pytest.raises(ValueError) as err:
        fn(*args, **kwargs)
    msg = str(err.value)
    assert "\n" not in msg
    return msg
