/**
 * The right-sidebar panel: the current notebook's flow as a DAG, coloured by state
 * as its steps run, with a foreach's progress; a click on a step scrolls to its cell.
 * Laid out in the browser by Graphviz compiled to WebAssembly (@hpcc-js/wasm-graphviz),
 * so it needs no `dot` on the machine; the same shapes and colours as the kernel's
 * own SVG (flowbook/widgets/dag.py).
 */
import { NotebookPanel } from '@jupyterlab/notebook';
import { LabIcon } from '@jupyterlab/ui-components';
import { Widget } from '@lumino/widgets';
import { IStepView, NotebookFlow } from './model';

const COLORS: { [state: string]: [string, string] } = {
  'not-run': ['#ffffff', '#9e9e9e'],
  running: ['#fff3c4', '#f0a500'],
  done: ['#d7f5dd', '#2e9e47'],
  failed: ['#ffd6d6', '#d32f2f'],
  stale: ['#eeeeee', '#9e9e9e']
};

export const flowIcon = new LabIcon({
  name: 'flowbook:dag',
  svgstr:
    '<svg xmlns="http://www.w3.org/2000/svg" width="16" height="16" viewBox="0 0 16 16">' +
    '<g class="jp-icon3" fill="#616161"><circle cx="8" cy="2.5" r="2"/>' +
    '<circle cx="3" cy="8" r="2"/><circle cx="13" cy="8" r="2"/><circle cx="8" cy="13.5" r="2"/>' +
    '<path d="M7 4 3.6 6.4l.6.8L7.6 4.8zM9 4l3.4 2.4-.6.8L8.4 4.8zM3.6 9.6 7 12l.6-.8-3.4-2.4zm8.8 0L9 12l-.6-.8 3.4-2.4z"/>' +
    '</g></svg>'
});

type GraphvizModule = typeof import('@hpcc-js/wasm-graphviz');
let graphviz: Promise<{ dot(source: string): string }> | null = null;

function loadGraphviz(): Promise<{ dot(source: string): string }> {
  if (!graphviz) {
    graphviz = import('@hpcc-js/wasm-graphviz').then((m: GraphvizModule) =>
      m.Graphviz.load()
    );
  }
  return graphviz;
}

function quote(text: string): string {
  return `"${text.replace(/\\/g, '\\\\').replace(/"/g, '\\"')}"`;
}

function shape(step: IStepView): string {
  if (step.name === 'start' || step.name === 'end') {
    return 'oval';
  }
  if (step.foreach) {
    return 'box3d';
  }
  if (step.next.length > 1) {
    return 'trapezium';
  }
  return step.join ? 'invtrapezium' : 'box';
}

/** The DOT text of the flow: shapes by role, colours by state, ids for the page. */
export function flowDot(name: string, steps: IStepView[]): string {
  const lines = [
    `digraph ${quote(name)} {`,
    '  rankdir=TB; bgcolor="transparent"; margin=0;',
    '  node [fontname="Helvetica", fontsize=11, style=filled];',
    '  edge [color="#777777", arrowsize=0.7];'
  ];
  const inForeach = new Set(steps.filter(s => s.foreach).flatMap(s => s.next));
  for (const step of steps) {
    const state = step.source === 'missing' ? 'not-run' : step.progress.state;
    const [fill, line] = COLORS[state] ?? COLORS['not-run'];
    const p = step.progress;
    const counted = p.total > 1 || (inForeach.has(step.name) && p.total > 0);
    const label = counted ? `${step.name}\n${p.done}/${p.total}` : step.name;
    const styles = ['filled'];
    if (state === 'stale' || step.source === 'missing') {
      styles.push('dashed');
    }
    const tooltip =
      step.source === 'missing'
        ? `${step.name}: no cell defines this step yet`
        : `${step.name} [${state}]` + (p.total > 1 ? ` ${p.done}/${p.total} tasks done` : '');
    const attributes = {
      id: `flowbook-dag-${step.name}`,
      class: `flowbook-dag-node flowbook-state-${state}` + (step.source === 'missing' ? ' flowbook-dag-missing' : ''),
      label,
      shape: shape(step),
      fillcolor: fill,
      color: line,
      penwidth: state === 'running' || state === 'failed' ? '2' : '1.2',
      style: styles.join(','),
      tooltip
    };
    const text = Object.entries(attributes)
      .map(([key, value]) => `${key}=${quote(value)}`)
      .join(', ');
    lines.push(`  ${quote(step.name)} [${text}];`);
  }
  for (const step of steps) {
    for (const target of step.next) {
      const style = step.foreach ? 'dashed' : 'solid';
      lines.push(`  ${quote(step.name)} -> ${quote(target)} [style=${style}];`);
    }
  }
  lines.push('}');
  return lines.join('\n');
}

export class FlowDagPanel extends Widget {
  constructor() {
    super();
    this.id = 'flowbook-dag-panel';
    this.addClass('flowbook-dag-panel');
    this.title.icon = flowIcon;
    this.title.caption = 'flowbook: the notebook flow (DAG)';
    this._header = document.createElement('div');
    this._header.className = 'flowbook-dag-header';
    this._graph = document.createElement('div');
    this._graph.className = 'flowbook-dag-graph';
    this._table = document.createElement('table');
    this._table.className = 'flowbook-dag-steps';
    this.node.append(this._header, this._graph, this._table);
    this._graph.addEventListener('click', event => this._onClick(event));
    this._table.addEventListener('click', event => this._onClick(event));
  }

  /** Follow this notebook's flow (null: no notebook is current). */
  follow(panel: NotebookPanel | null, flow: NotebookFlow | null): void {
    this._flow?.changed.disconnect(this._schedule, this);
    this._panel = panel;
    this._flow = flow;
    flow?.changed.connect(this._schedule, this);
    this._schedule();
  }

  protected onAfterShow(): void {
    this._schedule();
  }

  private _schedule(): void {
    window.cancelAnimationFrame(this._frame);
    this._frame = window.requestAnimationFrame(() => void this._render());
  }

  private async _render(): Promise<void> {
    if (!this.isVisible) {
      return; // drawn when shown
    }
    const flow = this._flow;
    const steps = flow?.steps() ?? [];
    const name = flow?.flowName ?? this._panel?.context.path.split('/').pop() ?? '';
    this._renderHeader(flow, name);
    this._renderTable(steps);
    if (!steps.length) {
      this._graph.replaceChildren(hint(flow));
      this._dot = '';
      return;
    }
    const dot = flowDot(name || 'flow', steps);
    if (dot === this._dot) {
      return;
    }
    this._dot = dot;
    try {
      const svg = (await loadGraphviz()).dot(dot);
      if (this._dot === dot) {
        this._graph.innerHTML = svg;
      }
    } catch (reason) {
      this._graph.textContent = `flowbook: the DAG could not be laid out (${reason})`;
    }
  }

  private _renderHeader(flow: NotebookFlow | null, name: string): void {
    const parts: string[] = [];
    if (flow?.run) {
      parts.push(flow.mode === 'run' ? `%flow run ${flow.run}` : `interactive run ${flow.run}`);
    }
    if (flow && !flow.connected) {
      parts.push('kernel: no %load_ext flowbook yet');
    }
    const title = document.createElement('div');
    title.className = 'flowbook-dag-title';
    title.textContent = flow ? name : 'No notebook';
    const detail = document.createElement('div');
    detail.className = 'flowbook-dag-detail';
    detail.textContent = parts.join(' · ');
    const buttons = document.createElement('div');
    buttons.className = 'flowbook-dag-buttons';
    for (const [to, label] of [
      ['tags', 'Magics → tags'],
      ['magics', 'Tags → magics']
    ]) {
      const button = document.createElement('button');
      button.className = `jp-mod-styled flowbook-convert-${to}`;
      button.textContent = label;
      button.title = `Convert this notebook's flow cells to ${to}`;
      button.disabled = !flow;
      button.dataset.to = to;
      buttons.append(button);
    }
    buttons.addEventListener('click', event => {
      const to = (event.target as HTMLElement).dataset.to;
      if (to) {
        this.convert?.(to as 'tags' | 'magics');
      }
    });
    this._header.replaceChildren(title, detail, buttons);
  }

  private _renderTable(steps: IStepView[]): void {
    const rows = steps.map(step => {
      const row = document.createElement('tr');
      row.dataset.step = step.name;
      row.className = `flowbook-state-${step.progress.state}`;
      const p = step.progress;
      const cells = [
        step.name,
        step.roles.join(' · '),
        step.source === 'missing' ? 'no cell' : p.state.replace('-', ' '),
        p.total > 1 ? `${p.done}/${p.total}` + (p.failed ? ` (${p.failed} failed)` : '') : ''
      ];
      for (const text of cells) {
        const td = document.createElement('td');
        td.textContent = text;
        row.append(td);
      }
      return row;
    });
    this._table.replaceChildren(...rows);
  }

  /** A click on a step (node or row): select its cell and scroll to it. */
  private _onClick(event: MouseEvent): void {
    const target = event.target as Element;
    const node = target.closest('g.node, tr[data-step]');
    const name =
      node?.getAttribute('data-step') ?? node?.id?.replace(/^flowbook-dag-/, '') ?? null;
    const panel = this._panel;
    const step = this._flow?.steps().find(s => s.name === name);
    if (!panel || !step?.cellId) {
      return;
    }
    const index = panel.content.widgets.findIndex(c => c.model.id === step.cellId);
    if (index < 0) {
      return;
    }
    panel.content.activeCellIndex = index;
    panel.content.deselectAll();
    void panel.content.scrollToCell(panel.content.widgets[index], 'start');
  }

  /** Set by the plugin: convert the current notebook's flow cells. */
  convert: ((to: 'tags' | 'magics') => void) | null = null;

  private _panel: NotebookPanel | null = null;
  private _flow: NotebookFlow | null = null;
  private _header: HTMLElement;
  private _graph: HTMLElement;
  private _table: HTMLTableElement;
  private _frame = 0;
  private _dot = '';
}

function hint(flow: NotebookFlow | null): HTMLElement {
  const div = document.createElement('div');
  div.className = 'flowbook-dag-hint';
  div.textContent = flow
    ? 'No step cells yet: write %%step NAME in a cell, or use "Make this cell a step" ' +
      'from the cell context menu.'
    : 'Open a notebook to see its flow.';
  return div;
}
