<?php
// The lab's PHP app (served by php-fpm and by Apache's mod_php).
// It really spends its request time: it loops until microtime(true) passes the deadline. usleep() is
// interrupted by signals (e.g. php-fpm's QUIT to its workers), so a single sleep could end early and make
// a cut-short request look good; the loop cannot.
$ms = isset($_GET['ms']) ? max(0, (int)$_GET['ms']) : 300;
$deadline = microtime(true) + $ms / 1000.0;
while (true) {
    $left = $deadline - microtime(true);
    if ($left <= 0) {
        break;
    }
    usleep((int)min(20000, max(1000, $left * 1000000)));
}
$pod = getenv('POD_NAME');
if ($pod === false || $pod === '') {
    $pod = isset($_SERVER['POD_NAME']) ? $_SERVER['POD_NAME'] : 'unknown';
}
// Fixed-size body with a marker at each end: the load generator checks it is complete.
// Keep in sync with bench/termination/plan.py (make_body / BODY_SIZE).
$head = 'PODGRACE-BEGIN pod=' . $pod . ' ms=' . $ms . ' ';
$tail = " PODGRACE-END\n";
$body = $head . str_repeat('x', max(0, 2048 - strlen($head) - strlen($tail))) . $tail;
header('Content-Type: text/plain');
header('Content-Length: ' . strlen($body));
echo $body;
