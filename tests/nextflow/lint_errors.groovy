/*
 * The errors and warnings that `nextflow lint` finds, printed one per line even where the
 * pinned Nextflow's `lint` command cannot print them (25.04.4 stops with a NullPointerException
 * on a file that has errors and no warnings: nextflow-io/nextflow#6202, fixed in 25.04.5, which
 * is not on Maven Central). The same parsers as `nextflow lint`, from the runtime's class path:
 *
 *   java -cp '<runtime>/lib/*' groovy.ui.GroovyMain lint_errors.groovy FILE...
 *
 * Output: `ERROR<TAB>file<TAB>line<TAB>message` and `WARNING<TAB>file<TAB>line<TAB>message`.
 */
import nextflow.config.control.ConfigParser
import nextflow.script.control.ScriptParser

def scripts = new ScriptParser()
def configs = new ConfigParser()
args.each { name -> name.endsWith('.nf') ? scripts.parse(new File(name)) : configs.parse(new File(name)) }
scripts.analyze()
configs.analyze()
[scripts, configs].each { parser ->
    parser.compiler().getSources().values().each { source ->
        def collector = source.getErrorCollector()
        (collector.getErrors() ?: []).each { message ->
            def cause = message.getCause()
            println(['ERROR', source.getName(), cause.getStartLine(), cause.getMessage()].join('\t'))
        }
        (collector.getWarnings() ?: []).each { warning ->
            println(['WARNING', source.getName(), warning.getContext()?.getStartLine(), warning.getMessage()].join('\t'))
        }
    }
}
