/**
 * One notebook's flow as the extension sees it: the cells (read here, live as they
 * are edited) and what the kernel says on the `flowbook` comm (flowbook/notebook/
 * labcomm.py): the graph it registered and the steps' states.
 */
import { NotebookPanel } from '@jupyterlab/notebook';
import { Kernel, KernelMessage } from '@jupyterlab/services';
import { ISignal, Signal } from '@lumino/signaling';
import { IDisposable } from '@lumino/disposable';
import { CellMeaning, cellMeaning } from './cells';

export const COMM_TARGET = 'flowbook';
export const PROTOCOL = 1;

export type StepState = 'not-run' | 'running' | 'done' | 'failed' | 'stale';

/** A step of the graph the kernel sends (`graph` and `hello` messages). */
export interface IKernelStep {
  name: string;
  roles: string[];
  next: string[];
  foreach: string | null;
  join: boolean;
  cell_id: string | null;
  doc: string;
}

export interface IStepProgress {
  state: StepState;
  done: number;
  failed: number;
  running: number;
  total: number;
}

export interface IStatesMessage {
  kind: 'states';
  mode: 'cells' | 'run';
  run: string | null;
  steps: { [name: string]: IStepProgress };
}

/** A cell of the notebook that means something to flowbook. */
export interface IFlowCell {
  cellId: string;
  index: number;
  meaning: CellMeaning;
}

/** A step as drawn: its place in the flow, its cell, its state. */
export interface IStepView {
  name: string;
  roles: string[];
  next: string[];
  foreach: string | null;
  join: boolean;
  /** The cell that defines it: the one the kernel ran, else the notebook's. */
  cellId: string | null;
  /** Known to the kernel (a cell that ran), only from the cells, or only named in a --next. */
  source: 'kernel' | 'cell' | 'missing';
  progress: IStepProgress;
}

export function roles(
  name: string,
  next: string[],
  foreach: string | null,
  join: boolean
): string[] {
  const found: string[] = [];
  if (name === 'start') {
    found.push('start');
  }
  if (join) {
    found.push('join');
  }
  if (foreach) {
    found.push('foreach');
  } else if (next.length > 1) {
    found.push('split');
  }
  if (name === 'end') {
    found.push('end');
  }
  return found;
}

const NOT_RUN: IStepProgress = { state: 'not-run', done: 0, failed: 0, running: 0, total: 0 };

export class NotebookFlow implements IDisposable {
  constructor(panel: NotebookPanel) {
    this.panel = panel;
    panel.sessionContext.kernelChanged.connect(this._onKernelChanged, this);
    panel.sessionContext.statusChanged.connect(this._onStatusChanged, this);
    void panel.sessionContext.ready.then(() => this._connect());
    void panel.context.ready.then(() => {
      const model = panel.content.model;
      model?.contentChanged.connect(this._scheduleRead, this);
      model?.cells.changed.connect(this._scheduleRead, this);
      this._readCells();
    });
  }

  readonly panel: NotebookPanel;

  get changed(): ISignal<this, void> {
    return this._changed;
  }

  get isDisposed(): boolean {
    return this._disposed;
  }

  /** Whether a kernel with `%load_ext flowbook` is on the comm. */
  get connected(): boolean {
    return this._comm !== null;
  }

  get flowName(): string | null {
    return this._flowName;
  }

  /** The run the side panel shows: the latest of the cells' run and a %flow run. */
  get run(): string | null {
    return this._latest()?.run ?? null;
  }

  get mode(): 'cells' | 'run' | null {
    return this._latest()?.mode ?? null;
  }

  get cells(): IFlowCell[] {
    return this._cells;
  }

  /** Every step: those of the cells in notebook order, then any only the kernel knows. */
  steps(): IStepView[] {
    const views = new Map<string, IStepView>();
    const kernel = new Map((this._graph ?? []).map(s => [s.name, s]));
    for (const cell of this._cells) {
      if (cell.meaning.kind !== 'step' || views.has(cell.meaning.step.name)) {
        continue;
      }
      const decl = cell.meaning.step;
      const known = kernel.get(decl.name);
      views.set(decl.name, {
        name: decl.name,
        roles: known?.roles ?? roles(decl.name, decl.next, decl.foreach, decl.join),
        next: known?.next ?? decl.next,
        foreach: known ? known.foreach : decl.foreach,
        join: known ? known.join : decl.join,
        cellId: this._liveCell(known?.cell_id) ?? cell.cellId,
        source: known ? 'kernel' : 'cell',
        progress: this.progress(decl.name)
      });
    }
    for (const step of this._graph ?? []) {
      if (!views.has(step.name)) {
        views.set(step.name, {
          ...step,
          cellId: this._liveCell(step.cell_id),
          source: 'kernel',
          progress: this.progress(step.name)
        });
      }
    }
    for (const step of [...views.values()]) {
      for (const target of step.next) {
        if (!views.has(target)) {
          views.set(target, {
            name: target,
            roles: roles(target, [], null, false),
            next: [],
            foreach: null,
            join: false,
            cellId: null,
            source: 'missing',
            progress: NOT_RUN
          });
        }
      }
    }
    return [...views.values()];
  }

  /** A step's state in the latest run (the side panel's). */
  progress(step: string): IStepProgress {
    return this._latest()?.steps[step] ?? NOT_RUN;
  }

  /**
   * The state a step cell shows: its step in the cells' own run (a %flow run is the
   * side panel's), unless another cell defined the step when it ran.
   */
  cellProgress(cellId: string, step: string): IStepProgress {
    const known = (this._graph ?? []).find(s => s.name === step);
    const ranHere = !known?.cell_id || known.cell_id === cellId || !this._liveCell(known.cell_id);
    return ranHere ? (this._states.cells?.steps[step] ?? NOT_RUN) : NOT_RUN;
  }

  private _latest(): IStatesMessage | null {
    return this._states[this._latestMode];
  }

  dispose(): void {
    if (this._disposed) {
      return;
    }
    this._disposed = true;
    window.clearTimeout(this._readTimer);
    this._dropComm();
    Signal.clearData(this);
  }

  // ------------------------------------------------------------------ cells
  private _scheduleRead(): void {
    window.clearTimeout(this._readTimer);
    this._readTimer = window.setTimeout(() => this._readCells(), 150);
  }

  private _readCells(): void {
    if (this._disposed) {
      return;
    }
    const model = this.panel.content.model;
    const found: IFlowCell[] = [];
    if (model) {
      for (let index = 0; index < model.cells.length; index++) {
        const cell = model.cells.get(index);
        if (cell.type !== 'code') {
          continue;
        }
        const tags = cell.getMetadata('tags');
        const meaning = cellMeaning(
          cell.sharedModel.getSource(),
          Array.isArray(tags) ? tags.filter(t => typeof t === 'string') : []
        );
        if (meaning) {
          found.push({ cellId: cell.id, index, meaning });
        }
      }
    }
    const key = JSON.stringify(found);
    if (key !== this._cellsKey) {
      this._cellsKey = key;
      this._cells = found;
      this._changed.emit();
    }
  }

  private _liveCell(cellId: string | null | undefined): string | null {
    const model = this.panel.content.model;
    if (!cellId || !model) {
      return null;
    }
    for (let index = 0; index < model.cells.length; index++) {
      if (model.cells.get(index).id === cellId) {
        return cellId;
      }
    }
    return null;
  }

  // ------------------------------------------------------------------ kernel
  private _onKernelChanged(): void {
    this._reset();
    void this._connect();
  }

  private _onStatusChanged(_: unknown, status: Kernel.Status): void {
    if (status === 'restarting' || status === 'autorestarting' || status === 'dead') {
      this._reset();
    }
  }

  private _reset(): void {
    this._dropComm();
    this._graph = null;
    this._states = { cells: null, run: null };
    this._flowName = null;
    this._changed.emit();
  }

  /** Listen for the kernel's comm; attach to one it opened before this page loaded. */
  private async _connect(): Promise<void> {
    const kernel = this.panel.sessionContext.session?.kernel;
    if (!kernel || this._disposed) {
      return;
    }
    kernel.registerCommTarget(COMM_TARGET, (comm, msg) => this._attach(comm, msg));
    try {
      const reply = await kernel.requestCommInfo({ target_name: COMM_TARGET });
      const content = reply.content;
      if (content.status !== 'ok' || this._comm || this._disposed) {
        return;
      }
      const ids = Object.keys(content.comms);
      const id = ids[ids.length - 1];
      if (id && !kernel.hasComm(id)) {
        this._attach(kernel.createComm(COMM_TARGET, id), null);
      }
    } catch (reason) {
      console.warn('flowbook: could not ask the kernel for its comms', reason);
    }
  }

  private _attach(comm: Kernel.IComm, msg: KernelMessage.ICommOpenMsg | null): void {
    this._dropComm();
    this._comm = comm;
    comm.onMsg = message => this._handle(message.content.data as any);
    comm.onClose = () => {
      if (this._comm === comm) {
        this._comm = null;
        this.panel.node.classList.remove('flowbook-lab-connected');
        this._changed.emit();
      }
    };
    this.panel.node.classList.add('flowbook-lab-connected');
    if (msg) {
      this._handle(msg.content.data as any);
    }
    comm.send({ kind: 'ready', protocol: PROTOCOL });
    this._changed.emit();
  }

  private _dropComm(): void {
    this._comm = null;
    this.panel.node.classList.remove('flowbook-lab-connected');
  }

  private _handle(data: any): void {
    if (!data || typeof data !== 'object') {
      return;
    }
    if (data.kind === 'hello' || data.kind === 'graph') {
      this._flowName = data.flow ?? null;
      this._graph = Array.isArray(data.steps) ? data.steps : [];
    } else if (data.kind === 'states' && (data.mode === 'cells' || data.mode === 'run')) {
      this._states[data.mode as 'cells' | 'run'] = data as IStatesMessage;
      this._latestMode = data.mode;
    } else {
      return;
    }
    this._changed.emit();
  }

  private _changed = new Signal<this, void>(this);
  private _disposed = false;
  private _comm: Kernel.IComm | null = null;
  private _graph: IKernelStep[] | null = null;
  private _states: { cells: IStatesMessage | null; run: IStatesMessage | null } = {
    cells: null,
    run: null
  };
  private _latestMode: 'cells' | 'run' = 'cells';
  private _flowName: string | null = null;
  private _cells: IFlowCell[] = [];
  private _cellsKey = '';
  private _readTimer = 0;
}
