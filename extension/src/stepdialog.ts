/** The form of "Make this cell a step": name, next steps, foreach, join. */
import { Dialog, showDialog } from '@jupyterlab/apputils';
import { Widget } from '@lumino/widgets';
import { IStepDecl, isIdentifier } from './cells';

class StepForm extends Widget implements Dialog.IBodyWidget<IStepDecl> {
  constructor(initial: IStepDecl) {
    super();
    this.addClass('flowbook-step-form');
    this._initial = initial;
    this._name = this._field('Step name', 'flowbook-step-name', initial.name, 'train');
    this._next = this._field(
      'Next steps',
      'flowbook-step-next',
      initial.next.join(', '),
      'e.g. train_a, train_b (none for end)'
    );
    this._foreach = this._field(
      'Foreach over artifact',
      'flowbook-step-foreach',
      initial.foreach ?? '',
      'a list on self, e.g. items (optional)'
    );
    const label = document.createElement('label');
    label.className = 'flowbook-step-field flowbook-step-checkbox';
    this._join = document.createElement('input');
    this._join.type = 'checkbox';
    this._join.className = 'flowbook-step-join';
    this._join.checked = initial.join;
    label.append(this._join, ' Join (reads its parents from inputs)');
    this.node.append(label);
  }

  private _field(title: string, cls: string, value: string, placeholder: string): HTMLInputElement {
    const label = document.createElement('label');
    label.className = 'flowbook-step-field';
    label.textContent = title;
    const input = document.createElement('input');
    input.className = `jp-mod-styled ${cls}`;
    input.value = value;
    input.placeholder = placeholder;
    label.append(input);
    this.node.append(label);
    return input;
  }

  getValue(): IStepDecl {
    return {
      name: this._name.value.trim(),
      next: this._next.value
        .split(/[\s,]+/)
        .map(n => n.trim())
        .filter(n => n),
      foreach: this._foreach.value.trim() || null,
      join: this._join.checked,
      options: this._initial.options,
      noReuse: this._initial.noReuse
    };
  }

  protected onAfterAttach(): void {
    this._name.focus();
    this._name.select();
  }

  private _initial: IStepDecl;
  private _name: HTMLInputElement;
  private _next: HTMLInputElement;
  private _foreach: HTMLInputElement;
  private _join: HTMLInputElement;
}

/** What is wrong with a step declaration, or null. */
export function stepProblem(step: IStepDecl): string | null {
  for (const name of [step.name, ...step.next]) {
    if (!isIdentifier(name)) {
      return name
        ? `'${name}' is not a valid step name (use a Python identifier).`
        : 'Give the step a name.';
    }
  }
  if (step.foreach && !isIdentifier(step.foreach)) {
    return `'${step.foreach}' is not an artifact name (use a Python identifier).`;
  }
  if (step.foreach && step.next.length !== 1) {
    return 'A foreach goes to exactly one next step.';
  }
  return null;
}

export async function askForStep(initial: IStepDecl): Promise<IStepDecl | null> {
  const result = await showDialog<IStepDecl>({
    title: 'Make this cell a flowbook step',
    body: new StepForm(initial),
    buttons: [Dialog.cancelButton(), Dialog.okButton({ label: 'Make step' })],
    focusNodeSelector: '.flowbook-step-name'
  });
  return result.button.accept ? result.value : null;
}
