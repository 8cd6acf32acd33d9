"""Every selector of the program language, one file each (see ``registry``): importing this
package registers them all, in the order programs and tests list them."""

from headcode.compiler.selectors import (  # noqa: F401 - imported to register
    anchor,
    decay,
    first,
    first_of,
    induction,
    most_recent,
    offset,
    same_token,
    segment_start,
    sentence,
    sentence_start,
    uniform,
    word_start,
)
from headcode.compiler.selectors.registry import REGISTRY, Selector, functions, get, register, registered

__all__ = ["REGISTRY", "Selector", "functions", "get", "register", "registered"]
