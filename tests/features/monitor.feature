Feature: Completion monitor alerts
  The monitor watches the batch tracker and e-mails on-call once per incident, with a
  recovery e-mail when it clears. Mail goes to a real SMTP server on 127.0.0.1; the
  clock is injected. The deadline is 05:00 America/New_York; times below are New York
  local time.

  Background:
    Given a monitor that started watching at 2026-11-22 12:00 with alerts to ops@example.com

  Scenario: A late batch is alerted once, then its recovery
    Given a batch started at 2026-11-23 01:00
    When the monitor checks at 2026-11-23 04:59
    Then no e-mail has been sent
    When the monitor checks at 2026-11-23 05:00
    And the monitor checks at 2026-11-23 05:05
    And the monitor checks at 2026-11-23 05:30
    Then exactly 1 e-mail has been sent
    And e-mail 1 has the subject "[LATE] nightly batch nightly-1 missed its 05:00 EST deadline (Mon 2026-11-23)"
    And e-mail 1 says "Looks stuck:   scrape"
    When the batch ends at 2026-11-23 05:47
    And the monitor checks at 2026-11-23 05:47
    And the monitor checks at 2026-11-23 06:00
    Then exactly 2 e-mails have been sent
    And e-mail 2 has the subject "[RECOVERED] nightly LATE: batch nightly-1 completed 47 min late, at 2026-11-23 05:47 EST"

  Scenario: A failed batch is alerted at once with its reason
    Given a batch started at 2026-11-23 01:00
    When the batch fails at 2026-11-23 02:10 at stage enrich with reason "exit code 3"
    And the monitor checks at 2026-11-23 02:10
    Then exactly 1 e-mail has been sent
    And e-mail 1 has the subject "[FAILED] nightly batch nightly-1 failed at stage enrich (2026-11-23 02:10 EST)"
    And e-mail 1 says "Failure:       stage enrich: exit code 3"
    And e-mail 1 says "bin/run_nightly.sh --resume"

  Scenario: No batch on a fresh install is reported missing at the deadline
    Given no tracker file exists
    When the monitor checks at 2026-11-23 04:59
    Then no e-mail has been sent
    When the monitor checks at 2026-11-23 05:00
    Then exactly 1 e-mail has been sent
    And e-mail 1 has the subject "[MISSING] no nightly batch started before the 05:00 EST deadline (Mon 2026-11-23)"
    When a batch starts at 2026-11-23 05:20
    And the monitor checks at 2026-11-23 05:20
    Then exactly 2 e-mails have been sent
    And e-mail 2 has the subject "[RECOVERED] nightly MISSING: batch nightly-1 started at 2026-11-23 05:20 EST, 20 min after the 2026-11-23 05:00 EST deadline"

  Scenario: An alert survives an SMTP outage and is delivered exactly once
    Given a batch started at 2026-11-23 01:00
    And the SMTP server answers "451 4.3.0 try again later"
    When the monitor checks at 2026-11-23 05:00
    And the monitor checks at 2026-11-23 06:00
    And the monitor checks at 2026-11-23 07:00
    Then no e-mail has been sent
    And 1 alert is waiting in the outbox
    When the SMTP server accepts mail again
    And the monitor checks at 2026-11-23 07:10
    And the monitor checks at 2026-11-23 08:00
    Then exactly 1 e-mail has been sent
    And 0 alerts are waiting in the outbox

  Scenario: A restarted monitor does not repeat an alert
    Given a batch started at 2026-11-23 01:00
    When the monitor checks at 2026-11-23 05:00
    And the monitor is restarted
    And the monitor checks at 2026-11-23 05:10
    And the monitor is restarted
    And the monitor checks at 2026-11-23 05:20
    Then exactly 1 e-mail has been sent
    When the batch ends at 2026-11-23 05:30
    And the monitor is restarted
    And the monitor checks at 2026-11-23 05:30
    Then exactly 2 e-mails have been sent

  Scenario: A batch that starts after a missed night is late from its start, in one alert chain
    Given a batch started at 2026-11-22 01:00
    When the batch ends at 2026-11-22 03:00
    And the monitor checks at 2026-11-23 05:10
    Then exactly 1 e-mail has been sent
    And e-mail 1 has the subject "[MISSING] no nightly batch started before the 05:00 EST deadline (Mon 2026-11-23)"
    When a batch starts at 2026-11-23 06:00
    And the monitor checks at 2026-11-23 06:05
    And the monitor checks at 2026-11-23 09:00
    Then exactly 1 e-mail has been sent
    When the batch ends at 2026-11-23 16:00
    And the monitor checks at 2026-11-23 16:00
    And the monitor checks at 2026-11-23 16:10
    Then exactly 2 e-mails have been sent
    And e-mail 2 has the subject "[RECOVERED] nightly LATE: batch nightly-2 completed 11 h 00 min late, at 2026-11-23 16:00 EST"
