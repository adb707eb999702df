"""From a media file to model inputs: decoding (PyAV), audio front ends, video / spectrogram transforms."""

from mbt.media.decode import Clip, MediaError, MediaInfo, Tracks, decode_clip, probe, probe_tracks
from mbt.media.fbank import kaldi_fbank, log_mel
from mbt.media.preprocess import Preprocessor, PreprocessorConfig, Sample

__all__ = [
    "Clip",
    "MediaError",
    "MediaInfo",
    "Preprocessor",
    "PreprocessorConfig",
    "Sample",
    "Tracks",
    "decode_clip",
    "kaldi_fbank",
    "log_mel",
    "probe",
    "probe_tracks",
]
