// Batch mode: many files (or a folder) → a sortable table, one file at a time so memory stays
// bounded (only a 48 px thumbnail and the File handle are kept per row), and a CSV export whose
// formatting is done in Rust (cxr::batch). A click on a row shows that file in the main view.
const $ = (id) => document.getElementById(id);
const THUMB = 48;

export function createBatch({ classify, csv, showSingle }) {
  let rows = [];
  let sortKey = null;
  let sortUp = true;
  let running = false;

  function thumbnail(result) {
    const c = document.createElement('canvas');
    c.width = THUMB; c.height = THUMB;
    if (result) {
      const full = document.createElement('canvas');
      full.width = result.preview_width; full.height = result.preview_height;
      full.getContext('2d').putImageData(new ImageData(new Uint8ClampedArray(result.preview.buffer, result.preview.byteOffset, result.preview.byteLength), result.preview_width, result.preview_height), 0, 0);
      c.getContext('2d').drawImage(full, 0, 0, THUMB, THUMB);
    }
    return c;
  }

  function rowElement(entry) {
    const tr = document.createElement('tr');
    const r = entry.row;
    tr.dataset.file = r.file;
    tr.dataset.probability = r.probability ?? '';
    tr.dataset.code = r.error_code ?? '';
    const cells = [entry.thumb, r.file, r.probability == null ? '' : `${(100 * r.probability).toFixed(1)} %`,
      r.label == null ? '' : (r.label === 'effusion' ? 'Effusion suspected' : 'No effusion detected'),
      r.ood == null ? '' : (r.ood ? 'does not look like one' : 'yes'), r.error ?? ''];
    for (const value of cells) {
      const td = document.createElement('td');
      if (value instanceof HTMLElement) td.append(value); else td.textContent = value;
      tr.append(td);
    }
    if (r.error) tr.className = 'failed'; else if (r.ood) tr.className = 'ood'; else if (r.label === 'effusion') tr.className = 'effusion';
    tr.addEventListener('click', () => showSingle(entry.file, r.file));
    entry.tr = tr;
    return tr;
  }

  function render() {
    const body = $('batch-table').tBodies[0];
    const order = [...rows];
    if (sortKey) {
      const key = (e) => (sortKey === 'probability' ? (e.row.probability ?? -1) : String(e.row[sortKey] ?? ''));
      order.sort((a, b) => (key(a) < key(b) ? -1 : key(a) > key(b) ? 1 : 0) * (sortUp ? 1 : -1));
    }
    body.replaceChildren(...order.map((e) => e.tr));
  }

  for (const th of document.querySelectorAll('#batch-table th[data-sort]')) {
    th.addEventListener('click', () => {
      sortUp = sortKey === th.dataset.sort ? !sortUp : true;
      sortKey = th.dataset.sort;
      render();
    });
  }

  $('batch-csv').addEventListener('click', async () => {
    const text = await csv(rows.map((e) => e.row));
    const url = URL.createObjectURL(new Blob([text], { type: 'text/csv' }));
    const a = document.createElement('a');
    a.href = url; a.download = 'effusion-batch.csv';
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  });
  $('batch-clear').addEventListener('click', () => { if (!running) { rows = []; render(); $('batch').hidden = true; } });

  async function run(files) {
    if (running) return;
    running = true;
    rows = [];
    sortKey = null;
    render();
    $('batch').hidden = false;
    $('batch-csv').disabled = true;
    document.body.dataset.batch = 'running';
    let done = 0;
    for (const { file, name } of files) {
      $('batch-progress').textContent = `${done} of ${files.length} done`;
      let msg;
      try { msg = await classify(await file.arrayBuffer()); } catch (e) { msg = { type: 'error', message: String(e.message || e), code: 'unreadable' }; }
      const r = msg.type === 'result' ? msg.result : null;
      const row = r
        ? { file: name, probability: r.probability, label: r.label, threshold: r.threshold, ood: r.ood ?? null, error_code: null, error: null }
        : { file: name, probability: null, label: null, threshold: null, ood: null, error_code: msg.code || 'error', error: msg.message };
      const entry = { row, file, thumb: thumbnail(r) };
      rows.push(entry);
      $('batch-table').tBodies[0].append(rowElement(entry));
      done += 1;
    }
    $('batch-progress').textContent = `${done} of ${files.length} done`;
    $('batch-csv').disabled = false;
    document.body.dataset.batch = 'done';
    running = false;
  }

  return { run };
}

// Every file under the dropped items, folders included (depth-first, names with their folder).
export async function droppedFiles(dataTransfer) {
  const entries = [...dataTransfer.items].map((i) => (i.webkitGetAsEntry ? i.webkitGetAsEntry() : null));
  if (entries.some((e) => !e)) return [...dataTransfer.files].map((file) => ({ file, name: file.name }));
  const out = [];
  async function walk(entry, prefix) {
    if (entry.isFile) {
      const file = await new Promise((resolve, reject) => entry.file(resolve, reject));
      out.push({ file, name: prefix + file.name });
    } else if (entry.isDirectory) {
      const reader = entry.createReader();
      for (;;) {
        const batch = await new Promise((resolve, reject) => reader.readEntries(resolve, reject));
        if (batch.length === 0) break;
        for (const child of batch) await walk(child, `${prefix}${entry.name}/`);
      }
    }
  }
  for (const entry of entries) await walk(entry, '');
  return out;
}
