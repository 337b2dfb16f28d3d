"use strict";
// Spectrograms computed in the browser: the Web Audio API decodes (and resamples) the audio,
// a short-time Fourier transform with a Hann window measures it, and a canvas shows it.
// Both clips are decoded at the model's sample rate, so they share one frequency axis.

const Spectrogram = (() => {
  const FLOOR_DB = 80; // dynamic range shown below each clip's loudest bin
  // Magma-like colour stops, dark (quiet) to light (loud).
  const STOPS = [
    [0, 0, 4], [40, 11, 84], [101, 21, 110], [159, 42, 99],
    [212, 72, 66], [245, 125, 21], [250, 193, 39], [252, 255, 164],
  ];

  /** Decode an encoded file to mono samples at `sampleRate` (the browser resamples). */
  async function decode(bytes, sampleRate) {
    const context = new OfflineAudioContext(1, 1, sampleRate);
    const buffer = await context.decodeAudioData(bytes.slice(0));
    const mono = new Float32Array(buffer.length);
    for (let c = 0; c < buffer.numberOfChannels; c++) {
      const channel = buffer.getChannelData(c);
      for (let i = 0; i < mono.length; i++) mono[i] += channel[i] / buffer.numberOfChannels;
    }
    return mono;
  }

  /** In-place iterative radix-2 FFT of (re, im); the length is a power of two. */
  function fft(re, im) {
    const n = re.length;
    for (let i = 1, j = 0; i < n; i++) { // bit-reversal permutation
      let bit = n >> 1;
      for (; j & bit; bit >>= 1) j ^= bit;
      j ^= bit;
      if (i < j) {
        [re[i], re[j]] = [re[j], re[i]];
        [im[i], im[j]] = [im[j], im[i]];
      }
    }
    for (let size = 2; size <= n; size <<= 1) {
      const angle = (-2 * Math.PI) / size;
      for (let start = 0; start < n; start += size) {
        for (let k = 0; k < size / 2; k++) {
          const wr = Math.cos(angle * k), wi = Math.sin(angle * k);
          const a = start + k, b = a + size / 2;
          const tr = re[b] * wr - im[b] * wi, ti = re[b] * wi + im[b] * wr;
          re[b] = re[a] - tr; im[b] = im[a] - ti;
          re[a] += tr; im[a] += ti;
        }
      }
    }
  }

  /** Power in dB, frames x (nFft/2 + 1) bins, frame-major; and its maximum. */
  function stft(samples, nFft, hop) {
    const bins = nFft / 2 + 1;
    const frames = Math.max(1, Math.floor((samples.length - nFft) / hop) + 1);
    const hann = Float32Array.from({ length: nFft }, (_, i) => 0.5 - 0.5 * Math.cos((2 * Math.PI * i) / nFft));
    const power = new Float32Array(frames * bins);
    const re = new Float32Array(nFft), im = new Float32Array(nFft);
    let peak = -Infinity;
    for (let f = 0; f < frames; f++) {
      for (let i = 0; i < nFft; i++) {
        re[i] = (samples[f * hop + i] || 0) * hann[i];
        im[i] = 0;
      }
      fft(re, im);
      for (let k = 0; k < bins; k++) {
        const db = 10 * Math.log10(re[k] * re[k] + im[k] * im[k] + 1e-12);
        power[f * bins + k] = db;
        if (db > peak) peak = db;
      }
    }
    return { power, frames, bins, peak };
  }

  function colour(t) {
    const x = Math.min(Math.max(t, 0), 1) * (STOPS.length - 1);
    const i = Math.min(Math.floor(x), STOPS.length - 2), w = x - i;
    return STOPS[i].map((v, c) => Math.round(v + (STOPS[i + 1][c] - v) * w));
  }

  /** Draw the spectrogram of `samples` (at `sampleRate`) on `canvas`, with axis labels. */
  function draw(canvas, samples, sampleRate) {
    const nFft = 2 ** Math.round(Math.log2(sampleRate * 0.032)); // ~32 ms windows
    const { power, frames, bins, peak } = stft(samples, nFft, nFft / 4);
    const image = new ImageData(frames, bins);
    for (let f = 0; f < frames; f++) {
      for (let k = 0; k < bins; k++) {
        const [r, g, b] = colour(1 + (power[f * bins + k] - peak) / FLOOR_DB);
        const p = ((bins - 1 - k) * frames + f) * 4; // low frequencies at the bottom
        image.data[p] = r; image.data[p + 1] = g; image.data[p + 2] = b; image.data[p + 3] = 255;
      }
    }
    const raw = document.createElement("canvas");
    raw.width = frames;
    raw.height = bins;
    raw.getContext("2d").putImageData(image, 0, 0);

    const scale = window.devicePixelRatio || 1;
    const width = canvas.clientWidth || 480, height = canvas.clientHeight || 200;
    canvas.width = Math.round(width * scale);
    canvas.height = Math.round(height * scale);
    const context = canvas.getContext("2d");
    context.setTransform(scale, 0, 0, scale, 0, 0);
    context.imageSmoothingEnabled = true;
    context.drawImage(raw, 0, 0, width, height);
    context.font = "11px system-ui, sans-serif";
    context.fillStyle = "rgba(255, 255, 255, 0.85)";
    const nyquist = sampleRate / 2;
    context.fillText(`${(nyquist / 1000).toFixed(1)} kHz`, 4, 12);
    context.fillText(`${(nyquist / 2000).toFixed(1)} kHz`, 4, height / 2 + 4);
    context.fillText("0", 4, height - 4);
    const seconds = `${(samples.length / sampleRate).toFixed(2)} s`;
    context.fillText(seconds, width - context.measureText(seconds).width - 4, height - 4);
    return { frames, bins, seconds: samples.length / sampleRate, nyquist };
  }

  return { decode, draw };
})();
