"""Checks of a session before it runs: its on/off options, and that the model read is the one ORT loaded.

ortbind reads a model's interface (names, element types, declared dims) with ``onnx`` and binds by
it; ORT runs the session it built. The two must agree, or every run binds by a type ORT does not
expect (refused at each run) or by names it does not have.
"""

from __future__ import annotations

import onnxruntime as ort

from ._metadata import ModelSpec
from ._shapes import format_dims
from .errors import ConfigError, ModelError

__all__ = ["check_flags", "check_interface", "host_memory_inputs"]


def check_flags(**flags: object) -> None:
    """Each on/off option a bool (``verify_shapes`` may be ``None``: the device's default); "no" or 0 is not one."""
    for name, value in flags.items():
        if type(value) is not bool and not (value is None and name == "verify_shapes"):
            also = ", or None for the device's default" if name == "verify_shapes" else ""
            raise ConfigError(f"{name}: expected True or False{also}, got {value!r}", kind="option", name=name)


def check_interface(spec: ModelSpec, session: ort.InferenceSession) -> None:
    """Refuse inputs ortbind cannot bind, and a model that is not the one ORT loaded."""
    for tensor in spec.inputs:
        if tensor.unsupported:
            raise ModelError(
                f"input {tensor.name!r}: {tensor.unsupported}; "
                f"run this model with onnxruntime.InferenceSession instead",
                kind="input",
                name=tensor.name,
            )
    session_inputs = session.get_inputs()
    session_outputs = list({o.name: o for o in session.get_outputs()}.values())
    for what, ours, theirs in (("inputs", spec.inputs, session_inputs), ("outputs", spec.outputs, session_outputs)):
        if [s.name for s in ours] != [t.name for t in theirs]:
            raise ModelError(
                f"model: its graph declares {what} {[s.name for s in ours]} but the ONNX Runtime session has "
                f"{[t.name for t in theirs]}; the model file is inconsistent, or another model was passed to "
                f"from_session(model=...)",
                kind="model",
            )
    by_name = {s.name: s for s in spec.inputs}
    for output in spec.outputs:
        source = by_name.get(output.name)
        if source is not None and source.elem_type != output.elem_type:
            raise ModelError(
                f"output {output.name!r}: it is input {output.name!r} passed through, but the model declares it "
                f"{output.elem_type_name} and the input {source.elem_type_name}; fix the model's declarations",
                kind="model",
                name=output.name,
            )
    for what, ours, theirs in (("inputs", spec.inputs, session_inputs), ("outputs", spec.outputs, session_outputs)):
        for mine, its in zip(ours, theirs):
            # ortbind binds by the declared type: one that is not the session's would be refused at every run.
            if mine.dtype is not None and mine.type_str != its.type:
                raise ModelError(
                    f"{what[:-1]} {mine.name!r}: the model declares {mine.type_str} but the ONNX Runtime session has "
                    f"{its.type}; another model was passed to from_session(model=...), or the session's model "
                    f"file was found elsewhere (a relative path read from another working directory)",
                    kind="model",
                    name=mine.name,
                )
    for mine, its in zip(spec.inputs, session_inputs):
        # ORT reports an input's declared dims ([] also when none are declared): ortbind checks by its own.
        if mine.dims is not None and its.shape and len(its.shape) != len(mine.dims):
            raise ModelError(
                f"input {mine.name!r}: the model declares {len(mine.dims)} dims {format_dims(mine.dims)} but the ONNX "
                f"Runtime session has {len(its.shape)} ({its.shape}); another model was passed to "
                f"from_session(model=...), or the session's model file was found elsewhere",
                kind="model",
                name=mine.name,
            )


def host_memory_inputs(session: ort.InferenceSession) -> frozenset[str]:
    """Inputs a CUDA session keeps in host memory (shape tensors and the like); ORT >= 1.23."""
    infos = getattr(session, "get_input_memory_infos", None)
    if infos is None:
        return frozenset()
    try:
        located = infos()
    except Exception:  # an ORT that has the method but cannot answer for this session
        return frozenset()
    names = [i.name for i in session.get_inputs()]
    return frozenset(name for name, info in zip(names, located) if getattr(info, "name", "") == "Cpu")
