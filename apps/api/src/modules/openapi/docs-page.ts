/**
 * `/docs`: one self-contained page (no CDN, no bundle: these machines have no internet) that
 * reads `/openapi.json` and lists every endpoint with its parameters, body, responses and the
 * problem codes it can answer, and every schema. Text goes in through `textContent` only.
 */
export const DOCS_PAGE_HTML = `<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>Hangar API</title>
<style>
  body { font: 15px/1.45 system-ui, sans-serif; margin: 0; color: #1d2330; background: #f7f8fa; }
  header { background: #1d2330; color: #fff; padding: 18px 28px; }
  header h1 { margin: 0; font-size: 22px; }
  header p { margin: 6px 0 0; color: #c4cad6; max-width: 900px; }
  main { padding: 12px 28px 48px; max-width: 1100px; }
  h2 { margin-top: 32px; border-bottom: 1px solid #d5d9e0; padding-bottom: 4px; }
  details { background: #fff; border: 1px solid #d5d9e0; border-radius: 6px; margin: 8px 0; }
  summary { cursor: pointer; padding: 8px 12px; font-family: ui-monospace, monospace; }
  .method { display: inline-block; min-width: 64px; font-weight: 700; }
  .GET { color: #1565c0; } .POST { color: #2e7d32; } .PATCH, .PUT { color: #ef6c00; } .DELETE { color: #c62828; }
  .summary { font-family: system-ui, sans-serif; color: #5b6475; margin-left: 8px; }
  .body { padding: 4px 16px 12px; }
  table { border-collapse: collapse; width: 100%; margin: 6px 0; }
  td, th { text-align: left; border-bottom: 1px solid #eceef2; padding: 4px 6px; vertical-align: top; }
  code, pre { font-family: ui-monospace, monospace; font-size: 13px; }
  pre { background: #f2f4f7; padding: 8px; overflow: auto; border-radius: 4px; }
</style>
</head>
<body>
<header><h1 id="title">Hangar API</h1><p id="description">Loading /openapi.json…</p></header>
<main id="main"></main>
<script>
(async () => {
  const el = (tag, text, cls) => { const e = document.createElement(tag); if (text !== undefined) e.textContent = text; if (cls) e.className = cls; return e; };
  const main = document.getElementById('main');
  let doc;
  try { doc = await (await fetch('/openapi.json')).json(); }
  catch (e) { document.getElementById('description').textContent = 'Could not load /openapi.json: ' + e; return; }
  document.getElementById('title').textContent = doc.info.title + ' ' + doc.info.version;
  document.getElementById('description').textContent = doc.info.description || '';
  const refName = (s) => s && s.$ref ? s.$ref.split('/').pop() : (s ? JSON.stringify(s) : '');
  const byTag = new Map();
  for (const [path, item] of Object.entries(doc.paths)) {
    for (const [method, op] of Object.entries(item)) {
      const tag = (op.tags && op.tags[0]) || 'Other';
      if (!byTag.has(tag)) byTag.set(tag, []);
      byTag.get(tag).push({ path, method: method.toUpperCase(), op });
    }
  }
  for (const tag of (doc.tags || []).map((t) => t.name).concat([...byTag.keys()])) {
    if (!byTag.has(tag)) continue;
    main.append(el('h2', tag));
    const info = (doc.tags || []).find((t) => t.name === tag);
    if (info && info.description) main.append(el('p', info.description));
    for (const { path, method, op } of byTag.get(tag)) {
      const d = el('details'); const s = el('summary');
      s.append(el('span', method, 'method ' + method), el('span', path), el('span', op.summary, 'summary'));
      d.append(s);
      const body = el('div', undefined, 'body');
      if (op.description) body.append(el('p', op.description));
      if (op.parameters && op.parameters.length) {
        const t = el('table'); t.append(el('tr')); t.firstChild.append(el('th', 'parameter'), el('th', 'in'), el('th', 'schema'), el('th', 'description'));
        for (const p of op.parameters) { const r = el('tr'); r.append(el('td', p.name + (p.required ? ' *' : '')), el('td', p.in), el('td', JSON.stringify(p.schema)), el('td', p.description || '')); t.append(r); }
        body.append(t);
      }
      if (op.requestBody) body.append(el('p', 'Body: ' + refName(op.requestBody.content['application/json'].schema)));
      const t = el('table'); t.append(el('tr')); t.firstChild.append(el('th', 'status'), el('th', 'response'));
      for (const [status, r] of Object.entries(op.responses)) {
        const row = el('tr'); const c = r.content ? Object.entries(r.content)[0] : undefined;
        row.append(el('td', status), el('td', r.description + (c ? ' — ' + c[0] + ' ' + refName(c[1].schema) : '')));
        t.append(row);
      }
      body.append(t); d.append(body); main.append(d);
    }
  }
  main.append(el('h2', 'Schemas'));
  for (const [name, schema] of Object.entries(doc.components.schemas)) {
    const d = el('details'); d.append(el('summary', name)); const b = el('div', undefined, 'body');
    b.append(el('pre', JSON.stringify(schema, null, 2))); d.append(b); main.append(d);
  }
})();
</script>
</body>
</html>
`;
