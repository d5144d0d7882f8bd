"""ortbind: run ONNX models on ONNX Runtime with torch tensors in and out, bound without copies.

>>> import torch, ortbind
>>> sess = ortbind.TorchSession("model.onnx", device="cpu")  # doctest: +SKIP
>>> out = sess(x=torch.randn(2, 3, 64, 64))  # doctest: +SKIP
"""

# torch first: a CUDA build of torch loads the CUDA and cuDNN libraries that onnxruntime-gpu's
# CUDA provider then finds already in the process.
import torch as _torch  # noqa: F401  (import order matters, see above)

from ._bound import BoundCall
from ._dtypes import ELEMENT_TYPES, ElementType
from ._metadata import ModelSpec, TensorSpec
from ._session import TorchSession
from ._shapes import OutputPlan, Rule
from .errors import (
    ConfigError,
    CopyWarning,
    DeviceError,
    DTypeError,
    InputError,
    ModelError,
    OrtbindError,
    OrtbindWarning,
    OutputError,
    ProviderError,
    ProviderFallbackWarning,
    RunError,
    ShapeError,
)

__version__ = "0.1.0"

__all__ = [
    "ELEMENT_TYPES",
    "BoundCall",
    "ConfigError",
    "CopyWarning",
    "DTypeError",
    "DeviceError",
    "ElementType",
    "InputError",
    "ModelError",
    "ModelSpec",
    "OrtbindError",
    "OrtbindWarning",
    "OutputError",
    "OutputPlan",
    "ProviderError",
    "ProviderFallbackWarning",
    "Rule",
    "RunError",
    "ShapeError",
    "TensorSpec",
    "TorchSession",
    "__version__",
]
