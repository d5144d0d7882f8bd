"""The public surface is exactly what __all__ says."""

from __future__ import annotations

import ortbind


def test_public_names_are_locked() -> None:
    assert sorted(ortbind.__all__) == sorted(
        [
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
    )
    for name in ortbind.__all__:
        assert hasattr(ortbind, name), name


def test_private_modules_stay_private() -> None:
    public = {n for n in dir(ortbind) if not n.startswith("_")}
    assert public - set(ortbind.__all__) == {"errors"}
