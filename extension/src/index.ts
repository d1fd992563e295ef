/**
 * flowbook in JupyterLab: badges on step cells, a live DAG side panel, and commands
 * that make a cell a step or convert a notebook between tags and magics. Everything
 * the kernel knows arrives on the `flowbook` comm that `%load_ext flowbook` opens.
 */
import { JupyterFrontEnd, JupyterFrontEndPlugin } from '@jupyterlab/application';
import { ICommandPalette, Notification } from '@jupyterlab/apputils';
import { Cell } from '@jupyterlab/cells';
import { INotebookTracker, NotebookPanel } from '@jupyterlab/notebook';
import { ReadonlyPartialJSONObject } from '@lumino/coreutils';
import { CellBadges } from './badges';
import { cellMeaning, convertCell, IStepDecl, makeStep } from './cells';
import { FlowDagPanel } from './dagpanel';
import { NotebookFlow } from './model';
import { askForStep, stepProblem } from './stepdialog';

const COMMANDS = {
  makeStep: 'flowbook:make-step',
  toTags: 'flowbook:convert-to-tags',
  toMagics: 'flowbook:convert-to-magics',
  showDag: 'flowbook:show-dag'
};

function cellTags(cell: Cell): string[] {
  const tags = cell.model.getMetadata('tags');
  return Array.isArray(tags) ? tags.filter(t => typeof t === 'string') : [];
}

function setCell(cell: Cell, source: string, tags: string[]): void {
  if (cell.model.sharedModel.getSource() !== source) {
    cell.model.sharedModel.setSource(source);
  }
  if (tags.length) {
    cell.model.setMetadata('tags', tags);
  } else if (cell.model.getMetadata('tags') !== undefined) {
    cell.model.deleteMetadata('tags');
  }
}

/** Convert every flow cell of a notebook; returns how many changed. */
function convertNotebook(panel: NotebookPanel, to: 'tags' | 'magics'): number {
  let changed = 0;
  for (const cell of panel.content.widgets) {
    if (cell.model.type !== 'code') {
      continue;
    }
    const converted = convertCell(
      { source: cell.model.sharedModel.getSource(), tags: cellTags(cell) },
      to
    );
    if (converted) {
      setCell(cell, converted.source, converted.tags);
      changed++;
    }
  }
  return changed;
}

function stepFromArgs(args: ReadonlyPartialJSONObject): IStepDecl | null {
  if (typeof args.name !== 'string') {
    return null;
  }
  const next = args.next;
  return {
    name: args.name,
    next: Array.isArray(next)
      ? next.map(String)
      : String(next ?? '')
          .split(/[\s,]+/)
          .filter(n => n),
    foreach: typeof args.foreach === 'string' && args.foreach ? args.foreach : null,
    join: args.join === true,
    options: {}
  };
}

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'flowbook:plugin',
  description: 'flowbook: step badges on cells, a live DAG side panel, step commands',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [ICommandPalette],
  activate: (app: JupyterFrontEnd, tracker: INotebookTracker, palette: ICommandPalette | null) => {
    const flows = new WeakMap<NotebookPanel, NotebookFlow>();
    const dag = new FlowDagPanel();
    app.shell.add(dag, 'right', { rank: 650 });

    tracker.widgetAdded.connect((_, panel) => {
      const flow = new NotebookFlow(panel);
      const badges = new CellBadges(panel, flow);
      flows.set(panel, flow);
      panel.disposed.connect(() => {
        badges.dispose();
        flow.dispose();
        flows.delete(panel);
      });
      if (tracker.currentWidget === panel) {
        dag.follow(panel, flow);
      }
    });
    tracker.currentChanged.connect((_, panel) => {
      dag.follow(panel, panel ? (flows.get(panel) ?? null) : null);
    });

    /** The cell a context menu was opened on, else the active cell. */
    const targetCell = (): { panel: NotebookPanel; cell: Cell } | null => {
      const panel = tracker.currentWidget;
      if (!panel) {
        return null;
      }
      const node = app.contextMenuHitTest(n => n.classList.contains('jp-Cell'));
      const cell =
        (node && panel.content.widgets.find(c => c.node === node)) || panel.content.activeCell;
      return cell ? { panel, cell } : null;
    };

    app.commands.addCommand(COMMANDS.makeStep, {
      label: 'Make this cell a step',
      caption: 'Mark this code cell as a flowbook step with cell tags (name, next, foreach, join)',
      isEnabled: () => targetCell()?.cell.model.type === 'code',
      execute: async args => {
        const target = targetCell();
        if (!target || target.cell.model.type !== 'code') {
          return;
        }
        const { panel, cell } = target;
        const source = cell.model.sharedModel.getSource();
        const meaning = cellMeaning(source, cellTags(cell));
        let step = stepFromArgs(args);
        if (!step) {
          const anyStep = flows.get(panel)?.cells.some(c => c.meaning.kind === 'step');
          const initial: IStepDecl =
            meaning?.kind === 'step'
              ? meaning.step
              : { name: anyStep ? '' : 'start', next: [], foreach: null, join: false, options: {} };
          step = await askForStep(initial);
          if (!step) {
            return;
          }
        }
        const problem = stepProblem(step);
        if (problem) {
          Notification.error(`flowbook: ${problem}`, { autoClose: 8000 });
          return;
        }
        const made = makeStep({ source, tags: cellTags(cell) }, step);
        setCell(cell, made.source, made.tags);
      }
    });

    const convert = (to: 'tags' | 'magics') => {
      const panel = tracker.currentWidget;
      if (!panel) {
        return 0;
      }
      const changed = convertNotebook(panel, to);
      Notification.info(
        `flowbook: ${changed} cell${changed === 1 ? '' : 's'} converted to ${to}.`,
        { autoClose: 4000 }
      );
      return changed;
    };
    dag.convert = convert;
    app.commands.addCommand(COMMANDS.toTags, {
      label: 'Convert flow cells to tags (flowbook)',
      caption: '%%step/%%setup/%%parameters cells become cell tags (as `flowbook tag --to tags`)',
      isEnabled: () => tracker.currentWidget !== null,
      execute: () => convert('tags')
    });
    app.commands.addCommand(COMMANDS.toMagics, {
      label: 'Convert flow cells to magics (flowbook)',
      caption: 'Cells tagged flowbook:step/setup get %%step/%%setup lines (as `flowbook tag --to magics`)',
      isEnabled: () => tracker.currentWidget !== null,
      execute: () => convert('magics')
    });
    app.commands.addCommand(COMMANDS.showDag, {
      label: 'Show the flow DAG (flowbook)',
      execute: () => app.shell.activateById(dag.id)
    });

    app.contextMenu.addItem({
      command: COMMANDS.makeStep,
      selector: '.jp-Notebook .jp-CodeCell',
      rank: 30
    });
    if (palette) {
      for (const command of Object.values(COMMANDS)) {
        palette.addItem({ command, category: 'flowbook' });
      }
    }
  }
};

export default plugin;
