/** A labelled text input whose error is announced and tied to it (aria-invalid, aria-describedby). */
import styled from 'styled-components';

const Wrap = styled.div`
  display: grid;
  gap: 0.25rem;
  margin-bottom: 0.6rem;
  label {
    font-size: 0.85rem;
    color: ${(p) => p.theme.color.textMuted};
  }
  input,
  textarea {
    width: 100%;
    padding: 0.5rem 0.6rem;
    border: 1px solid ${(p) => p.theme.color.border};
    border-radius: ${(p) => p.theme.radius};
    background: ${(p) => p.theme.color.surface};
  }
  input[aria-invalid='true'],
  textarea[aria-invalid='true'] {
    border-color: ${(p) => p.theme.color.danger};
  }
`;

const ErrorText = styled.span`
  color: ${(p) => p.theme.color.danger};
  font-size: 0.85rem;
`;

export interface FieldProps {
  readonly label: string;
  readonly name: string;
  readonly value: string;
  readonly error?: string | undefined;
  readonly onChange: (value: string) => void;
  readonly onBlur?: () => void;
  readonly multiline?: boolean;
  readonly rows?: number;
  readonly autoFocus?: boolean;
  readonly placeholder?: string;
  readonly type?: string;
}

export function Field(props: FieldProps) {
  const id = `field-${props.name}`;
  const errorId = `${id}-error`;
  const common = {
    id,
    name: props.name,
    value: props.value,
    'aria-invalid': props.error ? true : undefined,
    'aria-describedby': props.error ? errorId : undefined,
    onBlur: props.onBlur,
    autoFocus: props.autoFocus,
    placeholder: props.placeholder,
  };
  return (
    <Wrap>
      <label htmlFor={id}>{props.label}</label>
      {props.multiline ? (
        <textarea {...common} rows={props.rows ?? 8} onChange={(e) => props.onChange(e.target.value)} />
      ) : (
        <input {...common} type={props.type ?? 'text'} onChange={(e) => props.onChange(e.target.value)} />
      )}
      {props.error && (
        <ErrorText id={errorId} role="alert">
          {props.error}
        </ErrorText>
      )}
    </Wrap>
  );
}
