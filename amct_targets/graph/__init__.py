"""The one internal representation: a frozen GraphDef with named inputs and outputs."""
from amct_targets.graph.model import Model, TensorSpec

__all__ = ["Model", "TensorSpec"]
