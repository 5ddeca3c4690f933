"""dsmd: Dynamic Self-adaptive Multiscale Distillation of image-text models into small dual encoders.

``dsmd.load_student(path)`` loads a distilled student (an export folder or a checkpoint) for
encoding images and captions; the rest of the library lives in its subpackages.
"""

__version__ = "0.1.0"


def load_student(path, device="cpu", runtime="torch", threads=None):
    """An :class:`~dsmd.inference.Encoder` for the student at ``path`` (export folder or checkpoint).

    ``encode_images(images)`` (paths or PIL images) and ``encode_texts(texts)`` return ``(N, D)``
    float32 arrays, L2-normalised as trained. ``runtime``: ``torch``, or for an export ``onnx``,
    ``int8`` or ``auto`` (ONNX Runtime on the CPU, ``threads`` each encoder).
    """
    from dsmd.inference import load_student as _load

    return _load(path, device, runtime, threads)
