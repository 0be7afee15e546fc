"""A cache prefetch hint for numba kernels that visit an array at random places.

A kernel that probes a hash table stalls on each slot it reads: the branch on the slot's
content is mispredicted often enough that the processor does not run ahead to the next probe's
load. ``prefetch(array, i)`` (LLVM's ``llvm.prefetch``: a read, kept in every cache level) asks
for ``array[i]``'s cache line without waiting for it, so a kernel that knows its later probes'
slots (their hashes are computed first) keeps several loads in flight. It never faults and does
not check ``i``; it changes no value, only timing.

>>> import numba, numpy as np
>>> @numba.njit
... def total(values, picks):
...     s = 0
...     for i in range(len(picks)):
...         if i + 4 < len(picks):
...             prefetch(values, picks[i + 4])
...         s += values[picks[i]]
...     return s
>>> int(total(np.arange(10), np.array([9, 1, 5, 0, 2, 8])))
25
"""
from __future__ import annotations

import llvmlite.binding
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

#: LLVM's name of the prefetch intrinsic for a generic pointer (opaque pointers from LLVM 15 on).
_INTRINSIC = "llvm.prefetch.p0" if llvmlite.binding.llvm_version_info[0] >= 15 else "llvm.prefetch.p0i8"


@intrinsic
def prefetch(typingctx, array, index):
    """Hint that ``array[index]`` (a 1-d array, an integer index) will be read soon."""
    if not (isinstance(array, types.Array) and array.ndim == 1 and isinstance(index, types.Integer)):
        return None

    def codegen(context, builder, signature, args):
        array_type = signature.args[0]
        view = context.make_array(array_type)(context, builder, args[0])
        pointer = cgutils.get_item_pointer(context, builder, array_type, view, [args[1]], wraparound=False)
        byte_pointer = ir.IntType(8).as_pointer()
        int32 = ir.IntType(32)
        hint = cgutils.get_or_insert_function(
            builder.module, ir.FunctionType(ir.VoidType(), [byte_pointer, int32, int32, int32]), _INTRINSIC)
        # read (0), locality 3 (keep in every level), data cache (1)
        builder.call(hint, [builder.bitcast(pointer, byte_pointer), int32(0), int32(3), int32(1)])
        return context.get_dummy_value()

    return types.void(array, index), codegen
