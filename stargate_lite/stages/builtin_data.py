"""Built-in default data for stargate-lite: the everyday tasks, seed personas and
persona names that the tiny and default recipes use, written for this project."""

# Everyday requests whose best answer depends on who is asking. 72 in total,
# spread over seven themes: food & cooking, careers & work, learning & skills,
# travel, health & fitness, money & home, hobbies & leisure.
TASKS: tuple[str, ...] = (
    # Food & cooking
    "Can you suggest a weekly meal plan for me?",
    "What should I cook for dinner tonight?",
    "Can you help me plan a menu for a dinner party this weekend?",
    "What are some good lunches I can pack for work?",
    "Recommend a few breakfast ideas that will keep me full until noon.",
    "What kitchen equipment is actually worth buying?",
    "How can I cut down my grocery bill without eating badly?",
    "Suggest a new cuisine I should try cooking at home.",
    "What snacks should I keep around the house?",
    "Can you give me a simple baking project to try this weekend?",
    "How should I get started with meal prepping on Sundays?",
    # Careers & work
    "Should I ask my manager for a raise this year?",
    "How can I make my resume stand out?",
    "What career path would suit me best?",
    "How do I prepare for a job interview next week?",
    "Can you help me organize my workday so I get more done?",
    "Is it a good idea for me to start a side business?",
    "How should I handle a disagreement with a coworker?",
    "What professional certification would be worth pursuing?",
    "Should I consider switching to remote work?",
    "How can I grow my professional network?",
    # Learning & skills
    "What should I read next?",
    "I want to learn a new language. Which one should I pick, and how do I start?",
    "Can you recommend an online course for me?",
    "How can I get better at public speaking?",
    "What is a good way for me to learn to code?",
    "Suggest a podcast I might enjoy.",
    "How can I build a daily study habit that sticks?",
    "What musical instrument should I take up?",
    "How can I improve my writing?",
    "Help me pick a practical skill to learn this year.",
    # Travel
    "Where should I go on vacation this summer?",
    "Can you plan a long weekend getaway for me?",
    "What should I pack for my next trip?",
    "Recommend a destination for a trip on my own.",
    "How should I spend a one-day layover in a big city?",
    "Is it better for me to travel by train or by plane on my next trip?",
    "Can you suggest a road trip route I would enjoy?",
    "What kind of accommodation should I book for my holiday?",
    "How can I travel more often without overspending?",
    "Suggest some things to do on a rainy day while I am traveling.",
    # Health & fitness
    "Can you design a workout routine for me?",
    "How can I sleep better?",
    "What is a realistic fitness goal for me over the next three months?",
    "Suggest some ways to manage stress during a busy week.",
    "Should I join a gym or exercise at home?",
    "How can I drink more water and fewer sugary drinks?",
    "What sport could I take up?",
    "Can you suggest some stretches I can do each morning?",
    "How can I stay active when I sit for most of the day?",
    "Help me train for my first running race.",
    "What healthy habits could I realistically add to my routine?",
    # Money & home
    "Can you help me make a monthly budget?",
    "How should I start saving for retirement?",
    "Should I rent or buy a home?",
    "What is a good way to pay down my debt?",
    "How can I make my living space feel more comfortable?",
    "What houseplants would do well in my home?",
    "Help me plan a small home improvement project.",
    "How can I lower my energy bills?",
    "What should I think about before getting a pet?",
    "How can I keep my home tidy with little effort?",
    # Hobbies & leisure
    "What hobby should I pick up?",
    "Can you recommend a movie for tonight?",
    "What board game should I buy?",
    "Suggest a gift for my best friend's birthday.",
    "How should I spend a free Saturday?",
    "What music should I listen to while I work?",
    "Can you suggest a creative project I could finish in a month?",
    "Help me plan a fun evening with friends.",
    "What TV series should I start watching?",
    "Recommend a video game I would enjoy.",
)

# Few-shot examples shown to a model when it writes new personas. Each is a
# (name, description) pair; the description is first person and opens with
# "I'm NAME." in capitals.
SEED_PERSONAS: tuple[tuple[str, str], ...] = (
    (
        "Tomas",
        "I'm TOMAS. I'm 19 and in my first year studying mechanical engineering "
        "in Cordoba, Argentina, where I share a cramped apartment with two "
        "classmates. I work weekend shifts at a bike repair shop, and I love "
        "fixing things, playing five-a-side football, and cooking big pots of "
        "stew to last the week. Money is tight, so I think hard before spending "
        "anything and I rarely eat out. I'm outgoing and a bit impatient, and I "
        "learn best by trying things with my hands rather than reading about them.",
    ),
    (
        "Odette",
        "I'm ODETTE. I'm 75, a retired primary school teacher, and I have lived "
        "alone in a small village outside Lyon, France, since my husband passed "
        "away. My mornings start with a walk to the bakery, and my afternoons go "
        "to my vegetable garden, crossword puzzles, and long phone calls with my "
        "grandchildren. Arthritis in my knees makes stairs and long walks hard, "
        "so I plan my outings carefully. I'm curious and still love learning, but "
        "I'm wary of gadgets and prefer clear, patient explanations.",
    ),
    (
        "Kwame",
        "I'm KWAME. I'm 42 and work night shifts as an emergency room nurse in "
        "Accra, Ghana. I'm married with three kids under twelve, and we share a "
        "busy family house with my mother-in-law. In my free time I enjoy "
        "highlife music, watching football, and looking after the mango tree in "
        "our yard. My schedule is irregular and I'm often tired, so anything I "
        "take on has to fit into short, unpredictable windows. I'm calm and "
        "practical, and I like advice that gets straight to the point.",
    ),
    (
        "Mei",
        "I'm MEI. I'm 33 and work as a data engineer at a fintech company in "
        "Singapore, living in a compact rented flat with my partner and our cat. "
        "I earn well and like spending on good coffee, travel, and bouldering "
        "classes, but I'm saving hard for a deposit on a home. I was diagnosed "
        "with type 1 diabetes as a teenager, so I keep a close eye on what I eat "
        "and when I exercise. I'm analytical and a little bit of a perfectionist, "
        "and I like to see the numbers behind a recommendation.",
    ),
    (
        "Ravi",
        "I'm RAVI. I'm 58 and run a small hardware shop in a market town in "
        "Punjab, India, which I took over from my father. I live with my wife, "
        "my son, and his young family, and like everyone in our household I'm "
        "vegetarian. I read the newspaper cover to cover, follow cricket closely, "
        "and recently started walking every evening because my doctor is worried "
        "about my blood pressure. I'm traditional and generous, and slow to trust "
        "new ideas until I see them work for someone I know.",
    ),
    (
        "Hanna",
        "I'm HANNA. I'm 27 and work as a freelance graphic designer from my "
        "ground-floor apartment in Helsinki, Finland. I've used a wheelchair since "
        "a car accident at sixteen, so accessibility shapes where I go and how I "
        "travel. I love sketching in cafes, indie video games, and swimming at "
        "the public pool twice a week. My income rises and falls from month to "
        "month, which makes planning ahead stressful. I'm dry-humored and "
        "independent, and I get annoyed when people assume what I can or can't do.",
    ),
)

# First names handed out to generated personas. Drawn from many cultures,
# distinct (case-insensitive), and different from the seed persona names.
PERSONA_NAMES: tuple[str, ...] = (
    "Amara", "Aiko", "Alejandro", "Amir", "Anika", "Arjun", "Astrid", "Ayesha",
    "Beatriz", "Bilal", "Bjorn", "Camila", "Chen", "Chiara", "Chidi", "Dalia",
    "Dmitri", "Elif", "Emeka", "Esperanza", "Farah", "Felipe", "Fatima", "Freya",
    "Giulia", "Hamid", "Haruto", "Helga", "Hiroshi", "Ines", "Ingrid", "Isabela",
    "Jamal", "Javier", "Jia", "Joon", "Kai", "Kalani", "Karim", "Katarzyna",
    "Keanu", "Kenji", "Khadija", "Kofi", "Lars", "Layla", "Leilani", "Lucia",
    "Maeve", "Malik", "Mariam", "Mateo", "Maya", "Mehmet", "Miguel", "Mila",
    "Nadia", "Naledi", "Nasser", "Nia", "Niamh", "Nikhil", "Nkechi", "Noor",
    "Obinna", "Olga", "Omar", "Oren", "Paolo", "Priya", "Quang", "Rafael",
    "Rania", "Rashid", "Rosa", "Saanvi", "Sakura", "Salma", "Samir", "Santiago",
    "Sanjay", "Sipho", "Siobhan", "Soren", "Sunita", "Tariq", "Thandiwe", "Tiago",
    "Tove", "Uma", "Valentina", "Vikram", "Wanjiru", "Wei", "Xiomara", "Yara",
    "Yasmin", "Yusuf", "Zainab", "Zeynep", "Zoltan", "Zuri", "Adaeze", "Akira",
    "Alana", "Anders", "Aroha", "Bao", "Dario", "Ebru", "Eitan", "Farid",
    "Greta", "Hoang", "Ikaika", "Imani", "Kavya", "Kiri", "Laszlo", "Linh",
    "Lorenzo", "Magnus", "Marisol", "Mustafa", "Nomvula", "Olusegun", "Pavel", "Petra",
    "Rahel", "Renata", "Sergei", "Shira", "Tendai", "Wiremu", "Yosef", "Yuki",
    "Zara", "Abebe", "Bongani", "Dilnoza", "Ewa", "Ferhat", "Gulnara", "Hyun",
    "Ilse", "Jomo", "Kiona", "Lwazi", "Makana", "Nayeli", "Oksana", "Pita",
    "Rustam", "Sione", "Tala", "Ulla", "Vusi", "Aisling", "Bram", "Citlali",
)
