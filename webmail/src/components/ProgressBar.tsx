import styled from 'styled-components';

const Track = styled.div`
  height: 6px;
  border-radius: 3px;
  background: ${(p) => p.theme.color.border};
  overflow: hidden;
`;

const Fill = styled.div`
  height: 100%;
  background: ${(p) => p.theme.color.accent};
  transition: width 0.15s linear;
`;

export function ProgressBar({
  value,
  max,
  label,
  valueText,
}: {
  value: number;
  max: number;
  label: string;
  /** What a screen reader says instead of the bare percentage ("12 MiB of 48 MiB"). */
  valueText?: string;
}) {
  const percent = max > 0 ? Math.min(100, Math.round((value / max) * 100)) : 0;
  return (
    <Track
      role="progressbar"
      aria-label={label}
      aria-valuemin={0}
      aria-valuemax={100}
      aria-valuenow={percent}
      aria-valuetext={valueText}
    >
      <Fill style={{ width: `${percent}%` }} />
    </Track>
  );
}
