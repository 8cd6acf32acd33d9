"""headcode kernels: one op per folder, each with a torch reference, a Numba CPU kernel and a
Triton GPU kernel. No imports from the other headcode folders, no side effects here (see
docs/architecture.md: transformers may import this folder while looking for its own ``kernels``)."""
