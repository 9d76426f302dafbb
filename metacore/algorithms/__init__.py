"""One file per method; all gradient-based ones share `metacore.inner.inner_loop`."""

from metacore.algorithms.anil import ANIL
from metacore.algorithms.lstm import LSTMMetaLearner
from metacore.algorithms.maml import FOMAML, MAML
from metacore.algorithms.metasgd import MetaSGD
from metacore.algorithms.protonet import ProtoNet
from metacore.algorithms.reptile import Reptile

ALGORITHMS: dict[str, type[MAML]] = {
    cls.name: cls for cls in (MAML, FOMAML, Reptile, ANIL, MetaSGD, LSTMMetaLearner, ProtoNet)
}

__all__ = ["ALGORITHMS", "ANIL", "FOMAML", "LSTMMetaLearner", "MAML", "MetaSGD", "ProtoNet", "Reptile"]
