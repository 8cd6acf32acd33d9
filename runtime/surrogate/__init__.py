"""headcode.runtime.surrogate.apply: the surrogate runtime: programs in place of heads."""
