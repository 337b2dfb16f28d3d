"""Corpora, preparation and datasets.

- ``fetch``: ``fetch_default_corpus(cache_dir, install, deb) -> Path`` (Debian's
  asterisk-core-sounds-en-wav), ``resolve_corpus(DataConfig.corpus) -> Path``.
- ``prepare``: ``prepare_corpus(src, out, preset, workers, layout, rebuild) -> report``.
- ``dataset``: ``PreparedCorpus``, ``SegmentDataset``, ``UtteranceDataset``.
- ``sources`` (layouts), ``processing`` (one file), ``shards`` (storage), ``split``,
  ``outputs`` (manifest, prepared.json, report), ``cli`` (``distilwave data``).

Modules are imported on use: the datasets never pull in librosa.
"""
