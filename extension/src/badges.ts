/**
 * Badges at the top of flowbook's cells: a step's name, its role and its state
 * (not run, running with a foreach's progress, done, failed, stale), kept live from
 * the kernel's comm; a smaller badge on setup and parameters cells.
 */
import { NotebookPanel } from '@jupyterlab/notebook';
import { Cell } from '@jupyterlab/cells';
import { NotebookFlow, IStepProgress } from './model';

const BADGE_CLASS = 'flowbook-badge';
const STATE_LABELS: { [state: string]: string } = {
  'not-run': 'not run',
  running: 'running',
  done: 'done',
  failed: 'failed',
  stale: 'stale'
};

export class CellBadges {
  constructor(panel: NotebookPanel, flow: NotebookFlow) {
    this._panel = panel;
    this._flow = flow;
    flow.changed.connect(this._schedule, this);
    // new cell widgets (added, moved, or created as the notebook scrolls)
    panel.content.model?.cells.changed.connect(this._schedule, this);
    panel.content.modelChanged.connect(this._schedule, this);
    this._schedule();
  }

  dispose(): void {
    window.cancelAnimationFrame(this._frame);
    this._flow.changed.disconnect(this._schedule, this);
  }

  private _schedule(): void {
    window.cancelAnimationFrame(this._frame);
    this._frame = window.requestAnimationFrame(() => this.render());
  }

  /** Put each cell's badge in its header (and take stale ones away). */
  render(): void {
    const meanings = new Map(this._flow.cells.map(c => [c.cellId, c.meaning]));
    const views = new Map(this._flow.steps().map(s => [s.name, s]));
    for (const cell of this._panel.content.widgets) {
      const meaning = meanings.get(cell.model.id);
      const header = headerOf(cell);
      if (!header) {
        continue;
      }
      let badge = header.querySelector<HTMLElement>(`:scope > .${BADGE_CLASS}`);
      if (!meaning) {
        badge?.remove();
        continue;
      }
      if (!badge) {
        badge = document.createElement('div');
        header.prepend(badge);
      }
      if (meaning.kind === 'step') {
        const name = meaning.step.name;
        const progress = this._flow.cellProgress(cell.model.id, name);
        const roles = views.get(name)?.roles ?? [];
        fillStepBadge(badge, name, roles, progress, meaning.form);
      } else if (meaning.kind === 'invalid') {
        fill(badge, 'invalid', [['flowbook-badge-name', meaning.message]]);
        badge.title = `flowbook: ${meaning.message}`;
      } else {
        fill(badge, meaning.kind, [['flowbook-badge-name', meaning.kind]]);
        badge.title =
          meaning.kind === 'setup'
            ? 'flowbook: setup cell (imports and helpers every step sees)'
            : "flowbook: the parameters cell (the flow's Parameters)";
      }
    }
  }

  private _panel: NotebookPanel;
  private _flow: NotebookFlow;
  private _frame = 0;
}

function headerOf(cell: Cell): HTMLElement | null {
  return cell.node.querySelector<HTMLElement>(':scope > .jp-Cell-header');
}

function fill(badge: HTMLElement, kind: string, parts: [string, string][]): void {
  badge.className = `${BADGE_CLASS} flowbook-badge-${kind}`;
  const text = parts.map(p => p.join('\u0000')).join('\u0001');
  if (badge.dataset.text === text) {
    return;
  }
  badge.dataset.text = text;
  badge.replaceChildren(
    ...parts.map(([cls, value]) => {
      const span = document.createElement('span');
      span.className = cls;
      span.textContent = value;
      return span;
    })
  );
}

function fillStepBadge(
  badge: HTMLElement,
  name: string,
  roles: string[],
  progress: IStepProgress,
  form: string
): void {
  const parts: [string, string][] = [['flowbook-badge-name', name]];
  const shown = roles.filter(role => role !== name); // a step named start is the start
  if (shown.length) {
    parts.push(['flowbook-badge-role', shown.join(' · ')]);
  }
  parts.push(['flowbook-badge-state', STATE_LABELS[progress.state] ?? progress.state]);
  if (progress.total > 1) {
    parts.push(['flowbook-badge-progress', `${progress.done}/${progress.total}`]);
  }
  fill(badge, 'step', parts);
  badge.classList.add(`flowbook-state-${progress.state}`);
  badge.dataset.step = name;
  badge.dataset.roles = roles.join(' ');
  badge.dataset.state = progress.state;
  badge.dataset.progress = progress.total > 1 ? `${progress.done}/${progress.total}` : '';
  badge.title =
    `flowbook step '${name}' (${form})` +
    (roles.length ? `: ${roles.join(', ')}` : '') +
    ` — ${STATE_LABELS[progress.state] ?? progress.state}` +
    (progress.total > 1 ? `, ${progress.done} of ${progress.total} tasks done` : '') +
    (progress.failed ? `, ${progress.failed} failed` : '');
}
