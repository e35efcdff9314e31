// Validation mode: a labelled folder (class folders or a labels CSV, recognised in Rust by
// cxr::labels) → AUC with its 95 % CI, the ROC, the confusion matrix and rates at the model's
// threshold or the site's own. Files go to the worker one at a time; it keeps only scores and
// labels (cxr::validation), so memory stays bounded. The site's threshold is kept in localStorage.
const $ = (id) => document.getElementById(id);
const STORE = 'cxr-operating-point';
const fixed = (v, n = 3) => (typeof v === 'number' && Number.isFinite(v) ? v.toFixed(n) : 'n/a');

export function createValidation({ ask, model }) {
  let running = false;
  let threshold = null; // null: the model's own
  let svg = '';
  const root = $('validation');

  function stored() {
    try {
      const v = JSON.parse(localStorage.getItem(STORE));
      return v && v.model === model().name && Number.isFinite(v.threshold) ? v : null;
    } catch (_) { return null; }
  }

  function choose(t, rule) {
    threshold = t;
    if (t == null) localStorage.removeItem(STORE);
    else localStorage.setItem(STORE, JSON.stringify({ model: model().name, threshold: t, rule }));
  }

  function show(s, roc) {
    const r = root.dataset;
    Object.assign(r, { auc: s.auc ?? '', aucLow: s.auc_ci95 ? s.auc_ci95[0] : '', aucHigh: s.auc_ci95 ? s.auc_ci95[1] : '',
      images: s.images, positives: s.positives, sensitivity: s.sensitivity, specificity: s.specificity,
      threshold: s.threshold, unreadable: s.unreadable, ood: s.ood_flagged });
    $('val-auc').textContent = fixed(s.auc);
    $('val-ci').textContent = s.auc_ci95 ? `(95 % CI ${fixed(s.auc_ci95[0])}–${fixed(s.auc_ci95[1])}, bootstrap)` : (running ? '(CI when all files are in)' : '');
    $('val-threshold-value').textContent = fixed(s.threshold);
    $('val-sens').textContent = fixed(s.sensitivity);
    $('val-spec').textContent = fixed(s.specificity);
    $('val-acc').textContent = fixed(s.accuracy);
    const c = s.confusion;
    for (const k of ['tp', 'fn', 'fp', 'tn']) $(`val-${k}`).textContent = c[k];
    $('val-counts').textContent = `${s.images} images scored (${s.positives} effusion); ${s.unreadable} unreadable; ` +
      `${s.ood_flagged} flagged as not looking like a chest X-ray (still counted).`;
    $('val-unreadable').replaceChildren(...s.unreadable_reasons.map((g) => {
      const li = document.createElement('li');
      li.textContent = `${g.count} × ${g.message} (${g.files.join(', ')}${g.count > g.files.length ? ', …' : ''})`;
      return li;
    }));
    if (!running) $('val-slider').value = String(s.threshold);
    const local = threshold != null;
    $('val-local').hidden = !local;
    $('val-model').hidden = local;
    $('val-model-threshold').textContent = fixed(s.model_threshold);
    svg = roc;
    $('val-roc').innerHTML = roc;
    const chart = $('val-roc').querySelector('svg');
    if (chart) chart.setAttribute('data-testid', 'roc');
  }

  async function view(withCi = true) {
    const msg = await ask({ type: 'validate-view', threshold, withCi });
    if (msg.type === 'validate') show(msg.summary, msg.svg);
  }

  function download(text, type, name) {
    const url = URL.createObjectURL(new Blob([text], { type }));
    const a = document.createElement('a');
    a.href = url; a.download = name;
    document.body.append(a); a.click(); a.remove();
    setTimeout(() => URL.revokeObjectURL(url), 10_000);
  }

  $('val-slider').addEventListener('change', () => { choose(Number($('val-slider').value), 'slider'); view(); });
  $('val-target-apply').addEventListener('click', async () => {
    const target = Number($('val-target').value);
    if (!(target > 0 && target <= 1)) return;
    const msg = await ask({ type: 'validate-target', target });
    choose(msg.threshold, `sensitivity at least ${target}`);
    view();
  });
  $('val-reset').addEventListener('click', () => { choose(null); view(); });
  $('val-json').addEventListener('click', async () => {
    const msg = await ask({ type: 'validate-report', threshold });
    download(msg.json, 'application/json', 'effusion-validation.json');
  });
  $('val-svg').addEventListener('click', () => download(svg, 'image/svg+xml', 'effusion-roc.svg'));

  function controls(enabled) {
    for (const id of ['val-slider', 'val-target', 'val-target-apply', 'val-reset', 'val-json', 'val-svg']) $(id).disabled = !enabled;
  }

  // `items`: the dropped files ({ file, name }); `set`: the labelled set from cxr::labels.
  async function run(items, set) {
    if (running) return;
    running = true;
    threshold = stored()?.threshold ?? null;
    root.hidden = false;
    root.dataset.state = 'running';
    root.dataset.runs = String(Number(root.dataset.runs || 0) + 1);
    controls(false);
    $('val-layout').textContent = `${set.items.length} labelled files (${set.layout})` +
      (set.ignored ? `; ${set.ignored} other files left out` : '') +
      (set.missing ? `; ${set.missing} CSV rows name no dropped file` : '') +
      (set.excluded ? `; ${set.excluded} CSV rows without a usable label` : '');
    const total = set.items.length;
    $('val-progress').max = total;
    let msg = await ask({ type: 'validate-start', threshold });
    for (const [done, { index, label }] of set.items.entries()) {
      if (msg.type !== 'validate') break;
      $('val-progress').value = done;
      $('val-count').textContent = `${done} of ${total}`;
      show(msg.summary, msg.svg);
      msg = await ask({ type: 'validate-file', file: items[index].file, name: items[index].name, label, threshold });
    }
    running = false;
    if (msg.type !== 'validate') {
      root.dataset.state = 'failed';
      $('val-count').textContent = `stopped: ${msg.message}; drop the folder again`;
      return;
    }
    $('val-progress').value = total;
    $('val-count').textContent = `${total} of ${total} done`;
    await view(true);
    controls(true);
    root.dataset.state = 'done';
  }

  return { run, isRunning: () => running };
}
