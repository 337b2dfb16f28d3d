"""distilwave: fast neural audio generation by distillation.

The Python API is a thin facade over the project's packages (``models``, ``training``,
``service``)::

    import distilwave

    vocoder = distilwave.load("runs/cpu-8k/bundle")        # a bundle from `distilwave export`
    audio = vocoder.resynthesize(waveform, sample_rate)    # numpy float32 at vocoder.sample_rate
    audio = vocoder.vocode(mel)                            # (n_mels, M) normalised log-mel
    mel = vocoder.mel(waveform, sample_rate)               # the bundle's own front end

See ``models.vocoder.Vocoder`` for every option (temperature, seed, speaker, streaming,
batches of prepared requests).
"""

from models.bundle import VERSION as __version__
from models.vocoder import Prepared, Vocoder, load

__all__ = ["Prepared", "Vocoder", "__version__", "load"]
