/*
 * Helpers shared by the exo2micro process modules.
 *
 * Functions only: no processes, no params. Included by each module with
 *     include { shellQuote; paramOptions; stageStatusHandler } from '../utils'
 */

// Quote a value for bash: 'value', with embedded single quotes escaped.
def shellQuote(value) {
    return "'" + value.toString().replace("'", "'\\''") + "'"
}

// Pipeline parameters (name -> value) as repeated `--param name=value` options.
// Null values are left out: the tool then uses the registry default (exo2micro/params.py).
def paramOptions(values) {
    return values
        .findAll { _name, value -> value != null }
        .collect { name, value -> '--param ' + shellQuote("${name}=${value}") }
        .join(' ')
}

/*
 * Bash run after a stage tool; expects $e2m_status (the tool's exit code), $e2m_attempt and
 * $e2m_record (the stage record prefix, e.g. stages/01_load) and the tool's stderr in e2m.err.
 *
 *  - exit 0 and a stage record written: success.
 *  - exit 104, 130-145 or 175 (killed: out of memory, time limit, signal): the task fails with
 *    that code, so errorStrategy retries it with more memory, and after max_retries ignores it.
 *    Nothing is cached, so `-resume` runs the pair again.
 *  - any other exit (65 bad input, 2 usage, 1 internal error, ...): the failure is deterministic.
 *    It is written to failure.tsv (exit code, attempt, message) and the task ends with 0, so the
 *    summary can report the reason and the other pairs go on.
 */
def stageStatusHandler() {
    return '''
    cat e2m.err >&2
    if [ "$e2m_status" -eq 0 ] && ! ls "$e2m_record"*.json >/dev/null 2>&1; then
        echo "the tool exited 0 but wrote no ${e2m_record}*.json stage record" >> e2m.err
        e2m_status=70
    fi
    if [ "$e2m_status" -ne 0 ]; then
        case "$e2m_status" in
            104|13[0-9]|14[0-5]|175) exit "$e2m_status" ;;
        esac
        e2m_message=$( { grep -E '^(error|internal error): ' e2m.err || true; } | tail -n 1 )
        if [ -z "$e2m_message" ]; then
            e2m_message=$( { grep -v '^[[:space:]]*$' e2m.err || true; } | tail -n 1 )
        fi
        if [ -z "$e2m_message" ]; then
            e2m_message="exited with code $e2m_status and no message"
        fi
        printf '%s\\t%s\\t%s\\n' "$e2m_status" "$e2m_attempt" "$(printf '%s' "$e2m_message" | tr '\\t\\r\\n' '   ')" > failure.tsv
    fi
    '''.stripIndent()
}
