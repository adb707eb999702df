"""From a media file to model inputs: decoding (PyAV), audio front ends, video / spectrogram transforms."""

from mbt.media.decode import Clip, MediaError, MediaInfo, decode_clip, probe
from mbt.media.fbank import kaldi_fbank, log_mel
from mbt.media.preprocess import Preprocessor, PreprocessorConfig, Sample

__all__ = [
    "Clip",
    "MediaError",
    "MediaInfo",
    "Preprocessor",
    "PreprocessorConfig",
    "Sample",
    "decode_clip",
    "kaldi_fbank",
    "log_mel",
    "probe",
]
