/**
 * What a notebook cell says to flowbook, read in the browser: a step (magic
 * `%%step NAME --next A B ...` or tags `flowbook:step=NAME`, `flowbook:next=A,B`, ...),
 * a setup cell, the parameters cell, or nothing. The same convention as
 * flowbook/notebook/cells.py, which the kernel, the headless runner and the exporter
 * use; tests/browser/test_extension.py checks that the conversions below give what
 * `flowbook tag` (flowbook/notebook/tagging.py) gives.
 */

export const TAG_PREFIX = 'flowbook:';
const MAGIC_LINE = /^\s*%%(step|setup|parameters)\b(.*)$/;
const IDENTIFIER = /^[A-Za-z_][A-Za-z0-9_]*$/;
/** The step options that map to decorators, in the order the magic line gives them. */
const OPTIONS = ['retry', 'catch', 'timeout', 'resources'] as const;
type Option = (typeof OPTIONS)[number];

export interface IStepDecl {
  name: string;
  next: string[];
  foreach: string | null;
  join: boolean;
  options: Partial<Record<Option, string>>;
  /** `--no-reuse` / `flowbook:no-reuse`: never reuse an earlier result of this step */
  noReuse?: boolean;
}

export type CellMeaning =
  | { kind: 'step'; form: 'magic' | 'tags'; step: IStepDecl }
  | { kind: 'setup'; form: 'magic' | 'tags' }
  | { kind: 'parameters'; form: 'magic' | 'tags' }
  | { kind: 'invalid'; form: 'magic' | 'tags'; message: string };

export function isIdentifier(name: string): boolean {
  return IDENTIFIER.test(name);
}

/** Words of a line as a POSIX shell splits them (quotes and backslashes). */
export function shellWords(line: string): string[] {
  const words: string[] = [];
  let word: string | null = null;
  let quote: string | null = null;
  for (let i = 0; i < line.length; i++) {
    const c = line[i];
    if (quote) {
      if (c === quote) {
        quote = null;
      } else if (c === '\\' && quote === '"' && i + 1 < line.length) {
        word += line[++i];
      } else {
        word += c;
      }
    } else if (c === '"' || c === "'") {
      quote = c;
      word = word ?? '';
    } else if (c === '\\' && i + 1 < line.length) {
      word = (word ?? '') + line[++i];
    } else if (/\s/.test(c)) {
      if (word !== null) {
        words.push(word);
        word = null;
      }
    } else {
      word = (word ?? '') + c;
    }
  }
  if (word !== null) {
    words.push(word);
  }
  return words;
}

function quoteWord(word: string): string {
  return /^[A-Za-z0-9_@%+=:,./-]+$/.test(word)
    ? word
    : `'${word.replace(/'/g, "'\"'\"'")}'`;
}

/** `NAME --next A B --foreach X --join ...`: the text after `%%step`. */
export function parseStepLine(line: string): IStepDecl {
  const step: IStepDecl = {
    name: '',
    next: [],
    foreach: null,
    join: false,
    options: {}
  };
  const words = shellWords(line);
  for (let i = 0; i < words.length; i++) {
    const word = words[i];
    if (word === '--next') {
      while (i + 1 < words.length && !words[i + 1].startsWith('--')) {
        step.next.push(words[++i]);
      }
    } else if (word === '--join') {
      step.join = true;
    } else if (word === '--no-reuse') {
      step.noReuse = true;
    } else if (word === '--foreach' && i + 1 < words.length) {
      step.foreach = words[++i];
    } else if (
      word.startsWith('--') &&
      (OPTIONS as readonly string[]).includes(word.slice(2)) &&
      i + 1 < words.length
    ) {
      step.options[word.slice(2) as Option] = words[++i];
    } else if (!word.startsWith('--') && !step.name) {
      step.name = word;
    }
  }
  return step;
}

/** flowbook:KEY[=VALUE] tags as {KEY: VALUE or null}. */
export function tagValues(tags: string[]): Map<string, string | null> {
  const values = new Map<string, string | null>();
  for (const tag of tags) {
    if (tag.startsWith(TAG_PREFIX)) {
      const rest = tag.slice(TAG_PREFIX.length);
      const at = rest.indexOf('=');
      values.set(at < 0 ? rest : rest.slice(0, at), at < 0 ? null : rest.slice(at + 1));
    }
  }
  return values;
}

export function stepFromTags(values: Map<string, string | null>): IStepDecl {
  const step: IStepDecl = {
    name: values.get('step') ?? '',
    next: (values.get('next') ?? '')
      .split(',')
      .map(n => n.trim())
      .filter(n => n),
    foreach: values.get('foreach') || null,
    join: values.has('join'),
    options: {},
    noReuse: values.has('no-reuse')
  };
  for (const key of OPTIONS) {
    const value = values.get(key);
    if (value) {
      step.options[key] = value;
    }
  }
  return step;
}

export function stepTags(step: IStepDecl): string[] {
  const tags = [`${TAG_PREFIX}step=${step.name}`];
  if (step.next.length) {
    tags.push(`${TAG_PREFIX}next=${step.next.join(',')}`);
  }
  if (step.foreach) {
    tags.push(`${TAG_PREFIX}foreach=${step.foreach}`);
  }
  if (step.join) {
    tags.push(`${TAG_PREFIX}join`);
  }
  for (const key of OPTIONS) {
    if (step.options[key]) {
      tags.push(`${TAG_PREFIX}${key}=${step.options[key]}`);
    }
  }
  if (step.noReuse) {
    tags.push(`${TAG_PREFIX}no-reuse`);
  }
  return tags;
}

export function magicLine(step: IStepDecl): string {
  const parts = ['%%step', step.name];
  if (step.next.length) {
    parts.push('--next', ...step.next);
  }
  if (step.foreach) {
    parts.push('--foreach', step.foreach);
  }
  if (step.join) {
    parts.push('--join');
  }
  for (const key of OPTIONS) {
    if (step.options[key]) {
      parts.push(`--${key}`, step.options[key]!);
    }
  }
  if (step.noReuse) {
    parts.push('--no-reuse');
  }
  return parts.map(quoteWord).join(' ');
}

/** (magic name or null, the rest of its line, the body below it) */
export function splitMagic(source: string): [string | null, string, string] {
  const newline = source.indexOf('\n');
  const first = newline < 0 ? source : source.slice(0, newline);
  const rest = newline < 0 ? '' : source.slice(newline + 1);
  const match = MAGIC_LINE.exec(first);
  return match ? [match[1], match[2].trim(), rest] : [null, '', source];
}

/** Transitions a step body declares itself: `self.next(self.a, self.b, foreach='x')`. */
export function transitionsInBody(body: string): { next: string[]; foreach: string | null } {
  const call = /self\.next\(([^)]*)\)/.exec(body);
  if (!call) {
    return { next: [], foreach: null };
  }
  const next = [...call[1].matchAll(/self\.([A-Za-z_][A-Za-z0-9_]*)/g)].map(m => m[1]);
  const foreach = /foreach\s*=\s*["']([^"']+)["']/.exec(call[1]);
  return { next, foreach: foreach ? foreach[1] : null };
}

/** What a code cell means to flowbook (a magic wins over tags, as in the kernel). */
export function cellMeaning(source: string, tags: string[]): CellMeaning | null {
  const [magic, line, body] = splitMagic(source);
  const values = tagValues(tags);
  let meaning: CellMeaning | null = null;
  if (magic === 'step') {
    meaning = { kind: 'step', form: 'magic', step: parseStepLine(line) };
  } else if (magic === 'setup' || magic === 'parameters') {
    return { kind: magic, form: 'magic' };
  } else if (values.has('step')) {
    meaning = { kind: 'step', form: 'tags', step: stepFromTags(values) };
  } else if (values.has('setup')) {
    return { kind: 'setup', form: 'tags' };
  } else if (tags.includes('parameters') && !tags.includes('injected-parameters')) {
    return { kind: 'parameters', form: 'tags' };
  }
  if (meaning?.kind !== 'step') {
    return meaning;
  }
  const step = meaning.step;
  if (!isIdentifier(step.name)) {
    const why = step.name
      ? `'${step.name}' is not a valid step name`
      : meaning.form === 'magic'
        ? '%%step needs a NAME'
        : 'the tag flowbook:step needs =NAME';
    return { kind: 'invalid', form: meaning.form, message: why };
  }
  if (!step.next.length) {
    const declared = transitionsInBody(magic === 'step' ? body : source);
    step.next = declared.next;
    step.foreach = step.foreach ?? declared.foreach;
  }
  return meaning;
}

export interface ICellForm {
  source: string;
  tags: string[];
}

/**
 * One cell in the other form: magics to tags or tags to magics; null when the cell
 * is not a flow cell in the form being converted from. As flowbook/notebook/tagging.py
 * does it: tags other than flowbook's stay; the `parameters` tag stays a tag.
 */
export function convertCell(cell: ICellForm, to: 'tags' | 'magics'): ICellForm | null {
  const others = cell.tags.filter(t => !t.startsWith(TAG_PREFIX));
  const [magic, line, body] = splitMagic(cell.source);
  const values = tagValues(cell.tags);
  if (to === 'tags') {
    if (magic === 'step') {
      return { source: body, tags: [...others, ...stepTags(parseStepLine(line))] };
    } else if (magic === 'setup') {
      return { source: body, tags: [...others, `${TAG_PREFIX}setup`] };
    } else if (magic === 'parameters') {
      return { source: body, tags: [...others.filter(t => t !== 'parameters'), 'parameters'] };
    }
    return null;
  }
  if (magic !== null) {
    return null;
  }
  if (values.has('step')) {
    const step = stepFromTags(values);
    return { source: `${magicLine(step)}\n${cell.source}`, tags: others };
  } else if (values.has('setup')) {
    return { source: `%%setup\n${cell.source}`, tags: others };
  }
  return null;
}

/** The step a cell becomes: its tags replace flowbook's tags and any `%%step` line. */
export function makeStep(cell: ICellForm, step: IStepDecl): ICellForm {
  const others = cell.tags.filter(t => !t.startsWith(TAG_PREFIX));
  const [magic, , body] = splitMagic(cell.source);
  return {
    source: magic === 'step' || magic === 'setup' ? body : cell.source,
    tags: [...others, ...stepTags(step)]
  };
}
