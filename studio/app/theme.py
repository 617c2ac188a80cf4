"""The page's look: the gradio theme and the stylesheet (cards, mapping rows, verdict tiles, graph panel)
that studio.app.server passes to launch."""

import gradio as gr

THEME = gr.themes.Soft(
    primary_hue="indigo",
    secondary_hue="slate",
    neutral_hue="slate",
    font=["ui-sans-serif", "system-ui", "-apple-system", "Segoe UI", "sans-serif"],
    font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "monospace"],
)

CSS = """
.gradio-container { max-width: 1180px !important; margin: 0 auto !important; }
#studio-header { display: flex; align-items: baseline; gap: 14px; padding: 6px 2px 2px; }
#studio-header h1 { font-size: 1.6rem; margin: 0; font-weight: 700; letter-spacing: -0.01em; }
#studio-header .tag { color: var(--body-text-color-subdued); font-size: 0.95rem; }
.trust-banner { background: #fff4e5; border: 1px solid #f0a020; color: #7a4500; border-radius: 8px;
  padding: 10px 14px; font-weight: 600; }
.step-title { display: flex; align-items: center; gap: 10px; margin: 4px 0 2px; }
.step-title .num { display: inline-flex; width: 26px; height: 26px; border-radius: 50%; align-items: center;
  justify-content: center; background: var(--color-accent); color: white; font-weight: 700; font-size: 0.9rem; }
.step-title h2 { font-size: 1.12rem; margin: 0; font-weight: 650; }
.step-title .hint { color: var(--body-text-color-subdued); font-size: 0.88rem; }
.card { border: 1px solid var(--border-color-primary); border-radius: 10px; padding: 12px 14px;
  background: var(--block-background-fill); height: 100%; font-size: 0.92rem; }
.card-good { border-left: 4px solid #22a06b; } .card-bad { border-left: 4px solid #d93f3f; }
.card-empty { border-style: dashed; }
.card-title { font-weight: 650; margin-bottom: 6px; }
.card table.facts { border-collapse: collapse; width: 100%; margin: 0; border: none !important; }
.card table.facts tr, .card table.facts th, .card table.facts td { border: none !important; background: none !important; }
.card table.facts th { text-align: left; font-weight: 500; color: var(--body-text-color-subdued); width: 110px;
  padding: 2px 8px 2px 0 !important; }
.card table.facts td { padding: 2px 0 !important; }
.card .subhead { margin-top: 8px; font-weight: 600; font-size: 0.88rem; }
.card ul.inputs { margin: 4px 0 0 18px; padding: 0; }
.muted { color: var(--body-text-color-subdued); }
.ok { color: #1c7c54; font-weight: 600; } .bad { color: #c23030; font-weight: 600; }
.msg { white-space: normal; margin-top: 4px; font-family: var(--font-mono); font-size: 0.85rem; }
.map-head { font-weight: 600; color: var(--body-text-color-subdued); font-size: 0.85rem;
  border-bottom: 1px solid var(--border-color-primary); padding-bottom: 4px; }
.map-row { align-items: center !important; border-bottom: 1px solid var(--border-color-primary);
  padding: 6px 0 !important; gap: 12px !important; }
.map-row .column, .map-head .column { gap: 0 !important; justify-content: center; }
.map-row .prose, .map-head .prose, .map-row .html-container, .map-head .html-container { padding: 0 !important; min-height: 0 !important; }
.map-head { gap: 12px !important; padding: 0 0 4px 0 !important; }
.map-head .map-cell { font-weight: 600; color: var(--body-text-color-subdued); font-size: 0.82rem;
  text-transform: uppercase; letter-spacing: 0.04em; }
.map-cell { font-size: 0.92rem; overflow: hidden; text-overflow: ellipsis; white-space: nowrap; }
.map-name { font-weight: 600; font-family: var(--font-mono); }
.map-type { display: inline-block; padding: 1px 8px; border-radius: 10px; background: var(--background-fill-secondary);
  font-size: 0.8rem; }
.map-why { color: var(--body-text-color-subdued); font-size: 0.8rem; }
.mapping { border-radius: 8px; padding: 10px 14px; font-size: 0.92rem; }
.mapping-ok { background: #e8f6ef; border: 1px solid #9bd3b5; color: #145c3d; }
.mapping-bad { background: #fdecec; border: 1px solid #eba5a5; color: #8a1f1f; }
.mapping-wait { background: var(--background-fill-secondary); color: var(--body-text-color-subdued); }
.verdict { border-radius: 12px; padding: 14px 16px; border: 1px solid var(--border-color-primary); }
.verdict-head { font-size: 1.15rem; font-weight: 700; margin-bottom: 8px; }
.verdict-pass { background: #f0faf5; border-color: #9bd3b5; } .verdict-pass .verdict-head { color: #145c3d; }
.verdict-fail, .verdict-error { background: #fdf1f1; border-color: #eba5a5; }
.verdict-fail .verdict-head, .verdict-error .verdict-head { color: #8a1f1f; }
.verdict-idle .verdict-head, .verdict-running .verdict-head { color: var(--body-text-color-subdued); margin: 0; }
.tiles { display: grid; grid-template-columns: repeat(auto-fit, minmax(170px, 1fr)); gap: 10px; }
.tile { border-radius: 10px; padding: 10px 12px; background: white; border: 1px solid var(--border-color-primary); }
.tile-title { font-weight: 700; font-size: 0.98rem; }
.tile-detail { color: var(--body-text-color-subdued); font-size: 0.82rem; margin-top: 2px; }
.tile-pass { border-top: 4px solid #22a06b; } .tile-pass .tile-title { color: #145c3d; }
.tile-fail { border-top: 4px solid #d93f3f; } .tile-fail .tile-title { color: #8a1f1f; }
.tile-na { border-top: 4px solid #9aa4b2; } .tile-info { border-top: 4px solid var(--color-accent); }
#export-btn { min-height: 48px; font-size: 1.05rem; }
.graph-frame { width: 100%; height: 640px; border: 1px solid var(--border-color-primary); border-radius: 8px;
  background: white; }
.graph-facts, .graph-note { font-size: 0.85rem; margin: 4px 0; }
.graph-divergence { background: #fdf1f1; border: 1px solid #eba5a5; color: #8a1f1f; border-radius: 8px;
  padding: 8px 12px; font-weight: 600; margin-bottom: 6px; }
"""
