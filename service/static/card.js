"use strict";
// The model card of GET /v1/models as HTML: a few facts, metric tables, training data.
// Tables come from whatever nesting the bundle's card has; nothing here knows metric names.

const ModelCard = (() => {
  function megabytes(bytes) {
    return `${(bytes / 2 ** 20).toFixed(bytes < 2 ** 20 ? 2 : 0)} MB`;
  }

  function formatValue(value) {
    if (typeof value === "number") {
      if (Number.isInteger(value)) return value.toLocaleString("en");
      return Math.abs(value) >= 1000 ? value.toFixed(0) : String(Number(value.toPrecision(3)));
    }
    if (Array.isArray(value)) return value.map(formatValue).join(", ");
    if (value === null || value === undefined) return "–";
    return String(value);
  }

  function element(tag, text, className) {
    const node = document.createElement(tag);
    if (text !== undefined) node.textContent = text;
    if (className) node.className = className;
    return node;
  }

  /** Rows of [path, leaf] for a nested object. */
  function flatten(value, path = [], rows = []) {
    if (value && typeof value === "object" && !Array.isArray(value)) {
      for (const [key, inner] of Object.entries(value)) flatten(inner, [...path, key], rows);
    } else {
      rows.push([path.join(" › "), value]);
    }
    return rows;
  }

  const isPlain = (value) => value && typeof value === "object" && !Array.isArray(value);

  /** A table of an object: systems x metrics when every value is a flat object, else key/value. */
  function table(object, caption) {
    const table = element("table");
    if (caption) table.append(element("caption", caption));
    const rows = Object.values(object);
    if (rows.length && rows.every((row) => isPlain(row) && !Object.values(row).some(isPlain))) {
      const columns = [...new Set(rows.flatMap(Object.keys))];
      const head = table.createTHead().insertRow();
      head.append(element("th", ""), ...columns.map((c) => element("th", c)));
      head.querySelectorAll("th").forEach((th) => th.setAttribute("scope", "col"));
      const body = table.createTBody();
      for (const [name, row] of Object.entries(object)) {
        const tr = body.insertRow();
        const th = element("th", name);
        th.setAttribute("scope", "row");
        tr.append(th, ...columns.map((c) => element("td", formatValue(row[c]), "number")));
      }
      return table;
    }
    const body = table.createTBody();
    for (const [path, value] of flatten(object)) {
      const tr = body.insertRow();
      const th = element("th", path);
      th.setAttribute("scope", "row");
      const td = element("td");
      if (typeof value === "string" && value.length > 120) {
        const details = element("details");
        details.append(element("summary", `${value.slice(0, 60).split("\n")[0]}…`), element("pre", value));
        td.append(details);
      } else {
        td.textContent = formatValue(value);
        if (typeof value === "number") td.className = "number";
      }
      tr.append(th, td);
    }
    return table;
  }

  const kind = (card) => (card.architecture.conditional
    ? "conditional (audio or mel in)" : "unconditional (noise in)");

  /** One line: name, rate, size, kind. */
  function summary(card) {
    return `${card.id} · ${card.sample_rate.toLocaleString("en")} Hz · `
      + `${formatValue(card.architecture.parameters)} parameters · ${kind(card)}`;
  }

  /** The card (an item of GET /v1/models) as facts, metric tables and training data. */
  function render(card, container) {
    const arch = card.architecture;
    const facts = {
      model: `${card.id} (version ${card.version})`,
      "sample rate": `${card.sample_rate} Hz`,
      "hop length": `${card.hop_length} samples`,
      "mel bands": card.n_mels,
      parameters: arch.parameters,
      "size (float32)": megabytes(arch.parameters * 4),
      architecture: `${arch.flows} IAF flows × ${arch.layers_per_flow} WaveNet layers, `
        + `${arch.residual_channels} residual channels, receptive field ${arch.receptive_field} samples`,
      "source-filter": arch.source_filter ? "yes" : "no",
      input: kind(card),
      speakers: card.speakers.length ? card.speakers : "one",
      "default temperature": card.default_temperature,
      licence: card.license || card.card.licence || "not stated",
      limits: `uploads up to ${card.limits.max_upload_s} s and ${megabytes(card.limits.max_body_bytes)}, `
        + `generation up to ${card.limits.max_duration_s} s`,
    };
    container.replaceChildren();
    const list = element("dl", undefined, "facts");
    for (const [name, value] of Object.entries(facts)) {
      const row = element("div");
      row.append(element("dt", name), element("dd", formatValue(value)));
      list.append(row);
    }
    container.append(list);
    if (card.metrics) {
      container.append(
        element("h3", "Evaluation metrics"),
        element("p", "From the bundle's evaluation on held-out clips. Lower is better for lsd_db, "
          + "mcd_db and mr_stft; higher for pesq and stoi; x_real_time is speed (above 1 is "
          + "faster than real time).", "hint"),
      );
      for (const [group, values] of Object.entries(card.metrics)) {
        container.append(isPlain(values) ? table(values, group) : table({ [group]: values }));
      }
    } else {
      container.append(element("p", "This bundle's card has no evaluation metrics.", "hint"));
    }
    // The bundle's full card may describe its data apart from the training run; the card's
    // `training` is the run, or else that same data (then shown once).
    const data = isPlain(card.card.data) ? card.card.data : null;
    if (data) container.append(element("h3", "Training data"), table(data));
    if (card.training && JSON.stringify(card.training) !== JSON.stringify(data)) {
      container.append(element("h3", data ? "Training run" : "Training"), table(card.training));
    }
  }

  return { element, formatValue, megabytes, render, summary };
})();
