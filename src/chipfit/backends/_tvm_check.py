"""Run a compiled TVM module on saved inputs and save its outputs: ``python _tvm_check.py LIB IN.npz OUT.npz``.

This file is executed by a *foreign* Python (e.g. an aarch64 one under qemu-user) that has only numpy and the
TVM runtime, so it imports nothing from chipfit.
"""

import sys

import numpy as np


def main(lib: str, inputs: str, outputs: str) -> None:
    import tvm
    from tvm import relax

    vm = relax.VirtualMachine(tvm.runtime.load_module(lib), tvm.cpu())
    data = np.load(inputs)
    names = [k for k in data.files if not k.startswith("__")]
    order = [str(n) for n in data["__order__"]] if "__order__" in data.files else names
    out = vm["main"](*[tvm.runtime.tensor(np.ascontiguousarray(data[n])) for n in order])
    outs = out if isinstance(out, (tuple, list)) or type(out).__name__ == "Array" else [out]
    np.savez(outputs, *[o.numpy() for o in outs])


if __name__ == "__main__":
    main(*sys.argv[1:4])
