import styled, { css } from 'styled-components';

type Variant = 'primary' | 'secondary' | 'ghost' | 'danger';

export const Button = styled.button<{ $variant?: Variant }>`
  display: inline-flex;
  align-items: center;
  gap: 0.4rem;
  min-height: 36px;
  padding: 0.4rem 0.9rem;
  border-radius: ${(p) => p.theme.radius};
  border: 1px solid ${(p) => p.theme.color.border};
  background: ${(p) => p.theme.color.surface};
  color: ${(p) => p.theme.color.text};
  cursor: pointer;
  white-space: nowrap;
  text-decoration: none;
  &:hover:not(:disabled) {
    background: ${(p) => p.theme.color.hover};
  }
  &:disabled {
    opacity: 0.55;
    cursor: not-allowed;
  }
  ${(p) =>
    p.$variant === 'primary' &&
    css`
      background: ${p.theme.color.accent};
      border-color: ${p.theme.color.accent};
      color: ${p.theme.color.accentText};
      font-weight: 600;
      &:hover:not(:disabled) {
        background: ${p.theme.color.accent};
        filter: brightness(1.08);
      }
    `}
  ${(p) =>
    p.$variant === 'ghost' &&
    css`
      border-color: transparent;
      background: transparent;
    `}
  ${(p) =>
    p.$variant === 'danger' &&
    css`
      color: ${p.theme.color.danger};
    `}
`;

/** A square button with only an icon: `aria-label` is required, and is also its tooltip. */
export const IconButton = styled(Button).attrs<{ 'aria-label': string }>((p) => ({
  title: p['aria-label'],
  $variant: 'ghost' as const,
}))`
  min-width: 40px;
  min-height: 40px;
  padding: 0.4rem;
  justify-content: center;
`;
