"""What a plain tensor checkpoint may import when unpickled, and why anything else is dangerous.

An *allowlist*, not a blocklist: a blocklist misses the gadget nobody listed yet. The names are
the ones torch's own save path and numpy's array pickling emit (checked against numpy 2.x at
protocols 0-5: ``_reconstruct``, ``ndarray``, ``dtype``, ``scalar``, ``_frombuffer`` and
``_codecs.encode``, under both ``numpy.core`` and numpy 2's ``numpy._core``). Each one builds a
value from the arguments the pickle gives it and calls nothing the pickle chooses.
"""

from __future__ import annotations

import re

ALLOWED_GLOBALS = frozenset({
    "collections.OrderedDict", "collections.Counter", "builtins.set", "builtins.frozenset", "builtins.bytearray",
    "builtins.complex", "builtins.slice", "_codecs.encode",  # _codecs.encode: how protocols 0-2 store bytes
    "torch.Size", "torch.device", "torch.Tensor", "torch.nn.parameter.Parameter", "torch.serialization._get_layout",
    "torch.storage.TypedStorage", "torch.storage.UntypedStorage", "torch._tensor._rebuild_from_type_v2",
    "torch.strided", "torch.sparse_coo", "torch.sparse_csr", "torch.contiguous_format", "torch.channels_last",
    "torch.preserve_format",
    # numpy arrays and scalars of object-free dtypes (an object array's elements are pickles of their
    # own, whose globals are checked like any other).
    "numpy.ndarray", "numpy.dtype",
    "numpy.core.multiarray._reconstruct", "numpy._core.multiarray._reconstruct",
    "numpy.core.multiarray.scalar", "numpy._core.multiarray.scalar",
    "numpy.core.numeric._frombuffer", "numpy._core.numeric._frombuffer",  # protocol 5 (PickleBuffer)
})
_ALLOWED_PATTERNS = (
    re.compile(r"torch\._utils\._rebuild_(tensor|tensor_v2|tensor_v3|parameter|parameter_with_state|qtensor|"
               r"sparse_tensor|nested_tensor|meta_tensor_no_storage|device_tensor_from_cpu_tensor|"
               r"device_tensor_from_numpy|wrapper_subclass)"),
    re.compile(r"torch\.(cuda\.)?(sparse\.)?[A-Z][A-Za-z0-9]*(Storage|Tensor)"),
    re.compile(r"torch\.(bool|bfloat16|half|float|double|long|int|short|u?int[0-9]+|float[0-9]+(_e[0-9]m[0-9](fn|fnuz"
               r"|fnu)?|_e2m1fn_x2)?|complex[0-9]+|bits[0-9x]+|q(u)?int[0-9x]+|per_(tensor|channel)_[a-z_]+)"),
)

_REASONS = (
    (("os.", "posix.", "nt.", "subprocess.", "pty.", "commands."), "runs shell commands or touches the OS"),
    (("builtins.eval", "builtins.exec", "builtins.compile", "__builtin__.eval", "__builtin__.exec", "code.",
      "codeop."), "executes arbitrary Python code"),
    (("builtins.getattr", "__builtin__.getattr", "operator.attrgetter", "operator.methodcaller",
      "builtins.setattr", "builtins.delattr", "builtins.vars", "builtins.globals"),
     "reaches any attribute: a gadget that leads to calling anything"),
    (("builtins.__import__", "importlib.", "pydoc.locate", "pkgutil.", "imp."), "imports arbitrary modules"),
    (("runpy.",), "runs a Python file or module"),
    (("pip.", "setuptools.", "ensurepip."), "installs packages, running their setup code"),
    (("ctypes.", "_ctypes.", "cffi."), "loads and calls native code"),
    (("shutil.", "tempfile.", "pathlib.", "builtins.open", "io.", "_io."), "reads, writes or deletes files"),
    (("numpy.load", "numpy.lib.npyio", "pickle.", "_pickle.", "dill.", "joblib.", "torch.load", "marshal."),
     "loads a further file or pickle, which can run code of its own"),
    (("socket.", "urllib.", "http.", "requests.", "ftplib.", "smtplib."), "opens network connections"),
    (("webbrowser.", "signal.", "sys.", "threading.", "multiprocessing."), "controls the interpreter or process"),
    (("functools.partial", "functools.reduce", "operator.call"), "calls a callable chosen by the pickle"),
)


def is_allowed(global_name: str) -> bool:
    return global_name in ALLOWED_GLOBALS or any(p.fullmatch(global_name) for p in _ALLOWED_PATTERNS)


def danger_reason(global_name: str) -> str:
    for prefixes, reason in _REASONS:
        if any(global_name == p.rstrip(".") or global_name.startswith(p) for p in prefixes):
            return reason
    return "not in the allowlist of a plain tensor checkpoint; unpickling calls it, which may run code"
