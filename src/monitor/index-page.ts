/** kata-monitor's index page: its endpoints and the sandboxes it can see, with links. */

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;').replace(/'/g, '&#39;');
}

export function renderIndexPage(sandboxIds: string[], sandboxRoot: string): string {
  const q = (id: string) => esc(encodeURIComponent(id));
  const rows = sandboxIds
    .map(
      (id) =>
        `    <li><code>${esc(id)}</code>: <a href="/metrics?sandbox=${q(id)}">metrics</a>, ` +
        `<a href="/agent-url?sandbox=${q(id)}">agent url</a></li>`,
    )
    .join('\n');
  return `<!DOCTYPE html>
<html lang="en">
<head>
  <meta charset="utf-8">
  <title>kata-monitor (kata-ts)</title>
  <style>body { font-family: sans-serif; margin: 2em; } code { background: #f4f4f4; padding: 0 .2em; }</style>
</head>
<body>
  <h1>kata-monitor</h1>
  <h2>Endpoints</h2>
  <ul>
    <li><a href="/metrics">/metrics</a>: every sandbox's shim metrics, labelled <code>sandbox_id</code>, plus kata-monitor's own</li>
    <li><a href="/sandboxes">/sandboxes</a>: the running sandboxes (JSON)</li>
    <li><code>/agent-url?sandbox=&lt;id&gt;</code>: where a sandbox's agent listens</li>
  </ul>
  <h2>Sandboxes (${sandboxIds.length}, from <code>${esc(sandboxRoot)}</code>)</h2>
  <ul>
${rows || '    <li>none running</li>'}
  </ul>
</body>
</html>
`;
}
