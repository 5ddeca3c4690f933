"""BEiT-3, the DSMD paper's teacher: the official retrieval checkpoints in plain torch.

:class:`BEiT3Teacher` loads ``beit3_{base,large}_patch16_384_{coco,f30k}_retrieval.pth`` and
``beit3.spm``; :class:`BEiT3ForRetrieval` is the model, with the checkpoints' state-dict keys.
"""

from dsmd.teachers.beit3.model import BEiT3Config, BEiT3ForRetrieval
from dsmd.teachers.beit3.teacher import BEiT3Teacher
from dsmd.teachers.beit3.tokenizer import BEiT3Tokenizer

__all__ = ["BEiT3Config", "BEiT3ForRetrieval", "BEiT3Teacher", "BEiT3Tokenizer"]
